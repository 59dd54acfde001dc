// A model a gateway serves: its id, the vocabulary it tokenizes and detokenizes with, how it
// writes tool calls, and its width. One gateway serves several (--model a.gguf,b.gguf): a request
// names its model and gets that model's vocabulary; the coordinator places it on that model's
// pipelines.
import { Vocab } from '@strata/ggml';
import { toolFormatOf, toolMarkers, type ToolFormat } from './tool-format.ts';

export class ServedModel {
  /** the id clients name */
  readonly id: string;
  readonly vocab: Vocab;
  /** how the model writes tool calls */
  readonly toolFormat: ToolFormat;
  /** tokens that mark tool calls: shown as text even when they are special */
  readonly shown: ReadonlySet<number>;
  /** the model's hidden width: an embedding's length */
  readonly width: number;
  /** system_fingerprint of its answers */
  readonly fingerprint: string;

  private constructor(id: string, vocab: Vocab) {
    this.id = id;
    this.vocab = vocab;
    this.toolFormat = toolFormatOf(vocab.defaultChatTemplate());
    this.width = Number(vocab.meta(`${vocab.meta('general.architecture') ?? ''}.embedding_length`) ?? 0);
    // A marker that is one token of the vocabulary is that token; spelled out, it is plain text.
    this.shown = new Set(toolMarkers(this.toolFormat).map((m) => vocab.tokenize(m, false, true)).filter((t) => t.length === 1).map((t) => t[0]!));
    this.fingerprint = `strata-${id}`;
  }

  /** Loads the vocabulary of the GGUF at `path` (its weights stay on disk). */
  static load(id: string, path: string): ServedModel {
    return new ServedModel(id, Vocab.load(path));
  }

  dispose(): void {
    this.vocab.dispose();
  }
}
