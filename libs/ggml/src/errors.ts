// Errors raised by the native layer. Each class carries a name and the fields that locate it.

/** Base class of every error thrown by @strata/ggml. */
export class GgmlError extends Error {
  /** stable machine-readable code */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'GgmlError';
    this.code = code;
  }
}

/** The shared libraries could not be found or loaded. */
export class NativeLibraryError extends GgmlError {
  constructor(message: string) {
    super('native_library', message);
    this.name = 'NativeLibraryError';
  }
}

/** A ggml call returned a failure status. */
export class ComputeError extends GgmlError {
  readonly status: number;
  constructor(message: string, status: number) {
    super('compute', `${message} (ggml status ${status})`);
    this.name = 'ComputeError';
    this.status = status;
  }
}

/** An object was used after dispose(). */
export class DisposedError extends GgmlError {
  constructor(what: string) {
    super('disposed', `${what} was used after dispose()`);
    this.name = 'DisposedError';
  }
}

/** libllama refused a request (model load, tokenization, sampler construction). */
export class LlamaError extends GgmlError {
  constructor(message: string) {
    super('llama', message);
    this.name = 'LlamaError';
  }
}
