import { describe, expect, it } from 'vitest';
import { measureKvQuality } from '../lib/kv/quality';

describe('KV cache quality table', () => {
  it('orders the cache types by precision, the rotation helps every quantized type on outlier data, sizes are exact', () => {
    const rows = measureKvQuality({ tokens: 256 });
    for (const cache of ['mla', 'standard'] as const) {
      const err = (type: string, had = false) => rows.find((r) => r.cache === cache && r.type === type && r.hadamard === had)?.relError ?? NaN;
      // f16 keeps 11 mantissa bits, bf16 8; q8 / q6 / q4 keep 8 / 6 / 4-bit codes per group.
      expect(err('f16')).toBeLessThan(err('bf16'));
      for (const had of [false, true]) {
        expect(err('q8', had)).toBeLessThan(err('q6', had));
        expect(err('q6', had)).toBeLessThan(err('q4', had));
      }
      // The measured reason KV_DEFAULT_HADAMARD is on for every quantized type.
      for (const t of ['q8', 'q6', 'q4']) expect(err(t, true)).toBeLessThan(err(t, false));
    }
    const bytes = Object.fromEntries(rows.filter((r) => !r.hadamard).map((r) => [`${r.cache}/${r.type}`, r.bytesPerTokenLayer]));
    expect(bytes).toEqual({
      'mla/f16': 1152, 'mla/bf16': 1152, 'mla/q8': 672, 'mla/q6': 544, 'mla/q4': 416,
      'standard/f16': 16384, 'standard/bf16': 16384, 'standard/q8': 8704, 'standard/q6': 6656, 'standard/q4': 4608,
    });
  });
});
