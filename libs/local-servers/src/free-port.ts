// A free TCP port on the loopback interface, as the kernel hands it out.
import { createServer } from 'node:net';

/**
 * Binds 127.0.0.1:0, reads the port the kernel chose, and closes. Another process may take the
 * port before the caller binds it; servers that lose that race exit with `exited`.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error(`unexpected listen address ${String(address)}`))));
    });
  });
}
