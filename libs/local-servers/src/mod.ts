// @strata/local-servers: private nats-server and redis-server processes on free loopback ports.
export { LocalServerError, type LocalServerErrorCode, type LocalServerErrorFields } from './errors.ts';
export { freePort } from './free-port.ts';
export { FaultProxy, type LinkFaults } from './fault-proxy.ts';
export { findBinary, type FindBinaryOptions } from './find-binary.ts';
export { type LocalServer } from './managed-server.ts';
export { type ServerOptions } from './server-options.ts';
export {
  natsAuthorization, natsClientNames, startNats, startNatsCluster, type LocalNatsCluster, type NatsClusterMember, type NatsOptions, type NatsUser,
} from './nats-server.ts';
export {
  redisUsers, startRedis, startRedisSentinels, type RedisOptions, type RedisUser, type ReplicatedRedis, type ReplicatedRedisOptions,
} from './redis-server.ts';
