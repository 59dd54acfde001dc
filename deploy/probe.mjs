#!/usr/bin/env node
// Health probes for the container image, in plain Node (no TypeScript loader, so a probe starts in
// tens of milliseconds) because the image has no curl or nc:
//   probe.mjs http <port> <path>   a GET on 127.0.0.1 answers 2xx (the gateway's /healthz, /readyz)
//   probe.mjs tcp <port>           something listens on 127.0.0.1:<port> (a worker's KvTransfer)
//   probe.mjs connected [url …]    this network namespace holds an established TCP connection to
//                                  the port of each url (default: $STRATA_NATS_URL and
//                                  $STRATA_REDIS_URL): a coordinator, which listens on no port,
//                                  is up and talking to NATS and Redis
// Exit status 0: healthy; 1: not; 2: bad usage.
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';

/** Milliseconds a probe waits for an answer. */
const TIMEOUT_MS = 3000;

const DEFAULT_PORTS = { 'nats:': 4222, 'tls:': 4222, 'redis:': 6379, 'rediss:': 6379, 'redis-sentinel:': 26379 };

function done(ok, why) {
  if (!ok) process.stderr.write(`probe: ${why}\n`);
  process.exit(ok ? 0 : 1);
}

function http(port, path) {
  const req = request({ host: '127.0.0.1', port, path, timeout: TIMEOUT_MS }, (res) => {
    res.resume();
    done(res.statusCode >= 200 && res.statusCode < 300, `GET ${path} answered ${res.statusCode}`);
  });
  req.on('timeout', () => req.destroy(new Error('timed out')));
  req.on('error', (err) => done(false, `GET ${path}: ${err.message}`));
  req.end();
}

function tcp(port) {
  const s = connect({ host: '127.0.0.1', port, timeout: TIMEOUT_MS }, () => {
    s.destroy();
    done(true);
  });
  s.on('timeout', () => s.destroy(new Error('timed out')));
  s.on('error', (err) => done(false, `127.0.0.1:${port}: ${err.message}`));
}

/** Remote ports of the established TCP connections in /proc/net/tcp and tcp6. */
function establishedPorts() {
  const ports = new Set();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st …; addresses are HEXIP:HEXPORT, state 01 is ESTABLISHED
      const [, , remote, state] = line.trim().split(/\s+/);
      if (state === '01' && remote) ports.add(parseInt(remote.split(':')[1], 16));
    }
  }
  return ports;
}

/**
 * The ports a service URL names: `nats://a:4222,nats://b:4223` has two, and so has
 * `redis-sentinel://s1:26379,s2:26379/primary` (a coordinator holds a connection to a sentinel).
 */
function portsOf(url) {
  const scheme = /^([a-z][a-z0-9+.-]*:)\/\//.exec(url)?.[1] ?? 'nats:';
  return url.split(',').map((u) => {
    const m = /:(\d+)(?:\/.*)?$/.exec(u.replace(/^[a-z][a-z0-9+.-]*:\/\//, '').replace(/^.*@/, ''));
    return m ? Number(m[1]) : DEFAULT_PORTS[scheme] ?? 0;
  });
}

function connected(urls) {
  const list = urls.length > 0 ? urls : [process.env.STRATA_NATS_URL ?? 'nats://127.0.0.1:4222', process.env.STRATA_REDIS_URL ?? 'redis://127.0.0.1:6379'];
  const open = establishedPorts();
  const missing = list.filter((u) => !portsOf(u).some((p) => open.has(p)));
  done(missing.length === 0, `no established connection to ${missing.map((u) => u.replace(/\/\/[^@/]*@/, '//')).join(', ')}`);
}

const [mode, ...args] = process.argv.slice(2);
const port = Number(args[0]);
if (mode === 'http' && Number.isInteger(port) && args[1]?.startsWith('/')) http(port, args[1]);
else if (mode === 'tcp' && Number.isInteger(port)) tcp(port);
else if (mode === 'connected') connected(args);
else {
  process.stderr.write('usage: probe.mjs http <port> <path> | tcp <port> | connected [url …]\n');
  process.exit(2);
}
