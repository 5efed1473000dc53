/**
 * Text in and out: tokenizer.json through @huggingface/tokenizers, tokenizer_config.json for
 * special tokens and add_bos_token, and the chat template rendered with @huggingface/jinja.
 * A checkpoint without tokenizer.json works with token ids only.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError } from '../errors';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

export class TextTokenizer {
  readonly bosToken?: string;
  readonly eosToken?: string;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly addBos: boolean;
  private readonly tok: HfTokenizer;
  private readonly template?: string;
  private readonly vocab: Map<string, number>;

  private constructor(json: Record<string, unknown>, config: Record<string, unknown>) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { Tokenizer } = require('@huggingface/tokenizers') as { Tokenizer: new (t: object, c: object) => HfTokenizer };
    this.tok = new Tokenizer(json, config);
    this.vocab = new Map();
    const model = json.model as { vocab?: Record<string, number> } | undefined;
    for (const [k, v] of Object.entries(model?.vocab ?? {})) this.vocab.set(k, v);
    for (const t of (json.added_tokens as { content: string; id: number }[] | undefined) ?? []) this.vocab.set(t.content, t.id);
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    this.bosId = this.bosToken !== undefined ? this.vocab.get(this.bosToken) : undefined;
    this.eosId = this.eosToken !== undefined ? this.vocab.get(this.eosToken) : undefined;
    this.addBos = config.add_bos_token === true;
    const t = config.chat_template;
    this.template = typeof t === 'string' ? t : Array.isArray(t) ? (t.find((x) => x?.name === 'default')?.template as string | undefined) : undefined;
  }

  /** Loads tokenizer.json (+ tokenizer_config.json) from a checkpoint folder; null when absent. */
  static fromFolder(dir: string): TextTokenizer | null {
    const tj = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(tj)) return null;
    const read = (p: string) => {
      try {
        return JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new KvantError('KVANT_FORMAT', `${p}: not valid JSON (${(e as Error).message})`);
      }
    };
    const cfgPath = path.join(dir, 'tokenizer_config.json');
    return new TextTokenizer(read(tj), fs.existsSync(cfgPath) ? read(cfgPath) : {});
  }

  /** Token ids of `text`, with the BOS token first when the tokenizer config asks for it. */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    if ((opts.addSpecialTokens ?? true) && this.addBos && this.bosId !== undefined && ids[0] !== this.bosId) ids.unshift(this.bosId);
    return ids;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.tok.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? true });
  }

  get hasChatTemplate(): boolean {
    return this.template !== undefined;
  }

  /** Renders messages with the checkpoint's chat template (the template adds BOS itself). */
  applyChatTemplate(messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (!this.template) throw new KvantError('KVANT_FORMAT', 'tokenizer_config.json has no chat_template');
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { Template } = require('@huggingface/jinja') as { Template: new (t: string) => { render(v: object): string } };
    return new Template(this.template).render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
    });
  }
}
