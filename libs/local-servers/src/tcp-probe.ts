// One short exchange over a loopback TCP connection: how readiness probes talk to a server.
import { createConnection } from 'node:net';

/**
 * Connects to 127.0.0.1:port, writes `send` (if any), and resolves with the text received once
 * `enough(text)` holds; null when the connection is refused, closes first, or `timeoutMs` passes.
 */
export function tcpExchange(port: number, send: string | undefined, enough: (text: string) => boolean, timeoutMs: number): Promise<string | null> {
  return new Promise((resolve) => {
    let text = '';
    let settled = false;
    const socket = createConnection({ host: '127.0.0.1', port });
    const finish = (value: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(value);
    };
    const timer = setTimeout(() => finish(null), timeoutMs);
    socket.setEncoding('utf8');
    socket.once('connect', () => {
      if (send !== undefined) socket.write(send);
    });
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (enough(text)) finish(text);
    });
    socket.once('error', () => finish(null));
    socket.once('close', () => finish(null));
  });
}
