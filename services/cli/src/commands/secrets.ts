// strata secrets: the credentials of a deployment, made once into a folder, one subfolder per
// reader so each service mounts only its own (docker-compose.yml's `secrets` service runs it):
//   nats/nats.conf         users per role with their permissions (the NATS server's)
//   redis/redis.conf       the default user off, the coordinators' ACL user (the Redis server's)
//   coordinator/           nats-url, redis-url, term.key (the private key that signs terms)
//   worker/, gateway/      nats-url, term.pub
//   operator/              nats-url (strata status, drain, migrate)
// Passwords are random (144 bits); an existing folder is left as it is unless --force.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { natsAuthorization, redisUsers } from '@strata/local-servers';
import { NATS_ROLES, natsPermissions, type NatsRole } from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { REDIS_RULES, secret, writeTermKeys } from '../local-cluster.ts';

/** `strata secrets --dir D [--nats-host nats:4222] [--redis-host redis:6379] [--force]` */
export function secretsCommand(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv, ['force']));
  const dir = f.str('dir', 'secrets')!;
  const natsHost = f.str('nats-host', 'nats:4222')!;
  const redisHost = f.str('redis-host', 'redis:6379')!;
  const force = f.bool('force');
  f.done();
  if (existsSync(join(dir, 'coordinator', 'term.key')) && !force) {
    out.write(`strata secrets: ${dir} already holds a deployment's secrets (kept; --force makes new ones)\n`);
    return 0;
  }
  writeSecrets(dir, natsHost, redisHost);
  out.write(`strata secrets: wrote ${dir}/{nats,redis,coordinator,worker,gateway,operator}\n`);
  return 0;
}

/** Writes every secret of a deployment into `dir` (see above). */
export function writeSecrets(dir: string, natsHost: string, redisHost: string): void {
  const users = NATS_ROLES.map((role) => ({ user: `strata-${role}`, password: secret(), permissions: natsPermissions(role) }));
  const redisUser = { user: 'strata-coordinator', password: secret(), rules: REDIS_RULES };
  const put = (sub: string, name: string, text: string, mode = 0o644) => {
    mkdirSync(join(dir, sub), { recursive: true, mode: 0o755 });
    writeFileSync(join(dir, sub, name), text, { mode });
  };
  put('nats', 'nats.conf', ['# Written by strata secrets.', 'listen: "0.0.0.0:4222"', 'http_port: 8222', ...natsAuthorization(users)].join('\n') + '\n');
  put('redis', 'redis.conf', ['# Written by strata secrets.', ...redisUsers([redisUser])].join('\n') + '\n');
  const natsUrl = (role: NatsRole) => {
    const u = users.find((x) => x.user === `strata-${role}`)!;
    return `nats://${u.user}:${u.password}@${natsHost}\n`;
  };
  for (const role of NATS_ROLES) put(role, 'nats-url', natsUrl(role));
  put('coordinator', 'redis-url', `redis://${redisUser.user}:${redisUser.password}@${redisHost}\n`);
  const keys = writeTermKeys(join(dir, 'coordinator'));
  for (const role of ['worker', 'gateway']) put(role, 'term.pub', readFileSync(keys.publicKey, 'utf8'));
}
