// A free TCP port on the loopback interface, as the kernel hands it out.
import { createServer } from 'node:net';

/**
 * Binds 127.0.0.1:0, reads the port the kernel chose, and closes. Another process may take the
 * port before the caller binds it; servers that lose that race exit with `exited`.
 */
export async function freePort(): Promise<number> {
  return (await freePorts(1))[0]!;
}

/**
 * `n` distinct free ports: every one stays bound until all are chosen (ports picked one after
 * another may repeat, the kernel handing a just-closed port out again).
 */
export async function freePorts(n: number): Promise<number[]> {
  const servers = Array.from({ length: n }, () => createServer());
  try {
    return await Promise.all(servers.map((s) => listen(s)));
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))));
  }
}

function listen(server: ReturnType<typeof createServer>): Promise<number> {
  return new Promise((resolve, reject) => {
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      if (port > 0) resolve(port);
      else reject(new Error(`unexpected listen address ${String(address)}`));
    });
  });
}
