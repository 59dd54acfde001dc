// Encoding and decoding at the wire's edge: a payload that does not decode is a WireError, never
// a half-read message.
import { create, fromBinary, toBinary, toJson as pbToJson, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import { WireError } from './errors.ts';

/** Serializes a message given as a plain init object. */
export function encode<D extends DescMessage>(schema: D, init: MessageInitShape<D>): Uint8Array {
  return toBinary(schema, create(schema, init));
}

/** Parses bytes as `schema`; corrupt or truncated input throws WireError('corrupt'). */
export function decode<D extends DescMessage>(schema: D, bytes: Uint8Array, subject?: string): MessageShape<D> {
  try {
    return fromBinary(schema, bytes);
  } catch (err) {
    throw new WireError('corrupt', `undecodable ${schema.typeName}: ${(err as Error).message}`, subject);
  }
}

/** A message as proto3 JSON (camelCase names; 64-bit integers as strings), for admin APIs. */
export function toJson<D extends DescMessage>(schema: D, message: MessageShape<D>): unknown {
  return pbToJson(schema, message);
}
