// gRPC services from the buf-generated descriptors: @grpc/grpc-js service definitions whose
// (de)serializers are protobuf-es, so servers and clients share the types the rest of the wire uses.
import { fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { makeGenericClientConstructor, type MethodDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { WireError } from './errors.ts';

function codec<D extends DescMessage>(schema: D) {
  return {
    serialize: (m: MessageShape<D>) => Buffer.from(toBinary(schema, m)),
    deserialize: (b: Buffer): MessageShape<D> => {
      try {
        return fromBinary(schema, b);
      } catch (err) {
        throw new WireError('corrupt', `undecodable ${schema.typeName}: ${(err as Error).message}`);
      }
    },
  };
}

/** A grpc-js service definition of a generated service (method names as generated: camelCase). */
export function grpcService<S extends GenServiceMethods>(service: GenService<S>): ServiceDefinition {
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    const i = codec(m.input), o = codec(m.output);
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      requestStream: m.methodKind === 'client_streaming' || m.methodKind === 'bidi_streaming',
      responseStream: m.methodKind === 'server_streaming' || m.methodKind === 'bidi_streaming',
      requestSerialize: i.serialize as (v: unknown) => Buffer,
      requestDeserialize: i.deserialize,
      responseSerialize: o.serialize as (v: unknown) => Buffer,
      responseDeserialize: o.deserialize,
    };
  }
  return def;
}

/** A grpc-js client class for a generated service. */
export function grpcClient<S extends GenServiceMethods>(service: GenService<S>) {
  return makeGenericClientConstructor(grpcService(service) as never, service.typeName);
}
