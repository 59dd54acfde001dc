// @strata/config: service configuration from one schema (defaults < file < environment < flags).
export { describeConfig, envName, flagName, loadConfig, type ConfigOf, type Field, type FieldKind, type Schema, type Sources } from './config.ts';
export { ConfigError } from './errors.ts';
