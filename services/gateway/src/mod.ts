// @strata/gateway: the OpenAI-compatible HTTP gateway.
export { ApiKeys } from './api-keys.ts';
export { ApiError, fromClusterError } from './errors.ts';
export { gatewayConfig, gatewaySchema, type GatewayConfig } from './config.ts';
export { Gateway } from './gateway.ts';
export { runGeneration, type GenerationSink, type TokenOut, type Usage } from './generation.ts';
export { parseChat, parseCompletion, type GenerationSpec } from './openai-request.ts';
export { TextStream } from './text-stream.ts';
