/**
 * A small byte-level BPE tokenizer maker, for `kvant make-model`: the checkpoints kvant
 * generates need a real tokenizer.json (no hub here), in the same family DeepSeek-V2 uses
 * (byte-level BPE), so every text encodes and decodes losslessly.
 */

/** GPT-2's reversible byte -> printable-character map used by ByteLevel pre-tokenizers. */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCodePoint(cs[i])));
  return out;
}

export interface BpeTokenizerSpec {
  /** Total vocabulary including the 256 byte tokens and the special tokens. */
  vocabSize: number;
  /** Text the merges are learned from. */
  corpus: string;
  specialTokens: string[];
}

/** Learns merges greedily (most frequent adjacent pair first, ties by first appearance). */
export function makeByteLevelBpe(spec: BpeTokenizerSpec): { tokenizer: object; specialIds: Record<string, number> } {
  const b2u = bytesToUnicode();
  const vocab = new Map<string, number>();
  b2u.forEach((ch) => vocab.set(ch, vocab.size));
  const nMerges = Math.max(0, spec.vocabSize - 256 - spec.specialTokens.length);
  // Words as the ByteLevel pre-tokenizer would split them (space attached to the next word).
  const words = (spec.corpus.match(/ ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu) ?? []).map((w) =>
    Array.from(new TextEncoder().encode(w), (b) => b2u[b]),
  );
  const merges: string[] = [];
  while (merges.length < nMerges) {
    const counts = new Map<string, number>();
    for (const w of words)
      for (let i = 0; i + 1 < w.length; i++) {
        const k = `${w[i]} ${w[i + 1]}`;
        counts.set(k, (counts.get(k) ?? 0) + 1);
      }
    let best = '';
    let bestCount = 1;
    for (const [k, c] of counts) if (c > bestCount) [best, bestCount] = [k, c];
    if (!best) break; // corpus exhausted: fewer merges than asked for
    const [a, b] = best.split(' ');
    merges.push(best);
    vocab.set(a + b, vocab.size);
    for (const w of words)
      for (let i = 0; i + 1 < w.length; i++)
        if (w[i] === a && w[i + 1] === b) w.splice(i, 2, a + b);
  }
  // Pad with unused byte-pair tokens so the vocabulary has exactly the requested size.
  // (2-character tokens first, then 3-character ones: a 102400-entry vocabulary needs both.)
  for (let i = 0; vocab.size < spec.vocabSize - spec.specialTokens.length; i++) {
    const t = i < 65536 ? `${b2u[i & 255]}${b2u[i >> 8]}` : `${b2u[i & 255]}${b2u[(i >> 8) & 255]}${b2u[(i >> 16) & 255]}`;
    if (!vocab.has(t)) vocab.set(t, vocab.size);
  }
  const specialIds: Record<string, number> = {};
  const added = spec.specialTokens.map((content) => {
    const id = vocab.size + Object.keys(specialIds).length;
    specialIds[content] = id;
    return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
  });
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  return { tokenizer, specialIds };
}
