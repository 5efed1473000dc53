import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvantError, Tensor } from '../lib';
import { Checkpoint } from '../lib/io/checkpoint';
import { SafetensorsFile, writeSafetensors, writeShardedSafetensors } from '../lib/io/safetensors';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-st-'));

/** A raw safetensors file from a header object and a data length. */
function rawFile(header: unknown, dataBytes: number, lenOverride?: bigint): string {
  const p = path.join(tmp(), 'x.safetensors');
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(json.length));
  fs.writeFileSync(p, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
  return p;
}

function formatError(p: string): string {
  try {
    SafetensorsFile.open(p);
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    expect((e as KvantError).code).toBe('KVANT_FORMAT');
    return (e as KvantError).message;
  }
  throw new Error('expected KVANT_FORMAT');
}

describe('safetensors', () => {
  it('round-trips tensors of every dtype through a memory-mapped file', () => {
    const dir = tmp();
    const ts: Array<[string, Tensor]> = [
      ['a.weight', Tensor.random([3, 5], 'f32', { seed: 1 })],
      ['b.weight', Tensor.random([7], 'bf16', { seed: 2 })],
      ['c', Tensor.random([2, 2, 3], 'f16', { seed: 3 })],
      ['d', Tensor.random([9], 'i32', { seed: 4, low: -100, high: 100 })],
      ['e', Tensor.random([5], 'u8', { seed: 5, low: 0, high: 255 })],
      ['empty', Tensor.zeros([0, 4], 'f32')],
    ];
    writeSafetensors(path.join(dir, 'm.safetensors'), ts, { metadata: { source: 'test' } });
    const f = SafetensorsFile.open(path.join(dir, 'm.safetensors'));
    expect(f.metadata).toEqual({ format: 'pt', source: 'test' });
    for (const [name, t] of ts) {
      const got = f.tensor(name);
      expect(got.dtype).toBe(t.dtype);
      expect(got.shape).toEqual(t.shape);
      expect(got.storage.kind).toBe('native'); // mapped, not copied into the JS heap
      expect(Buffer.from(got.byteView()).equals(Buffer.from(t.byteView()))).toBe(true);
    }
    f.close();
    expect(() => f.tensor('a.weight')).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
  });

  it('writes shards with an index that the checkpoint reader follows', () => {
    const dir = tmp();
    const ts: Array<[string, Tensor]> = Array.from({ length: 6 }, (_, i) => [`layer.${i}.weight`, Tensor.random([64, 32], 'bf16', { seed: i })]);
    fs.writeFileSync(path.join(dir, 'config.json'), '{"architectures": ["X"]}');
    const r = writeShardedSafetensors(dir, ts, 3 * 64 * 32 * 2);
    expect(r.files).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(index.metadata.total_size).toBe(6 * 64 * 32 * 2);
    let calls = 0;
    const ck = Checkpoint.open(dir, () => calls++);
    expect(calls).toBe(2);
    expect(ck.names().sort()).toEqual(ts.map(([n]) => n).sort());
    expect(Buffer.from(ck.tensor('layer.5.weight').byteView()).equals(Buffer.from(ts[5][1].byteView()))).toBe(true);
    expect(() => ck.tensor('nope')).toThrow(expect.objectContaining({ code: 'KVANT_FORMAT', message: expect.stringContaining('"nope"') }));
    ck.close();
  });

  it('rejects malformed files before allocating anything from them', () => {
    const ok = { w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };
    expect(formatError(rawFile('{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', 8))).toContain('past the end'); // truncated
    expect(formatError(rawFile({ w: { ...ok.w, data_offsets: [8, 24] } }, 16))).toContain('past the end'); // offsets outside
    expect(formatError(rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, 16))).toContain('overlap');
    expect(formatError(rawFile(ok, 16, 1000n))).toContain('larger than the file');
    expect(formatError(rawFile(ok, 16, 2n ** 60n))).toContain('exceeds'); // u64 beyond 2^53, read exactly
    expect(formatError(rawFile(ok, 16, 200_000_000n))).toContain('exceeds the 100000000-byte limit');
    expect(formatError(rawFile('{"w": oops}', 16))).toContain('not valid JSON');
    expect(formatError(rawFile('[1, 2]', 16))).toContain('not a JSON object');
    expect(formatError(rawFile({ w: { ...ok.w, dtype: 'F12' } }, 16))).toContain('unknown dtype');
    expect(formatError(rawFile({ w: { ...ok.w, shape: [2, 3] } }, 24))).toContain('needs 24 bytes but data_offsets span 16');
    expect(formatError(rawFile({ w: { ...ok.w, shape: [2, -2] } }, 16))).toContain('non-negative integers');
    expect(formatError(rawFile({ w: { ...ok.w, data_offsets: [16, 0] } }, 16))).toContain('begin <= end');
    expect(formatError(rawFile({ __metadata__: { a: 1 }, ...ok }, 16))).toContain('__metadata__');
    const short = path.join(tmp(), 's.safetensors');
    fs.writeFileSync(short, Buffer.alloc(5));
    expect(formatError(short)).toContain('shorter than the 8-byte header length');
    expect(() => SafetensorsFile.open('/nonexistent.safetensors')).toThrow(expect.objectContaining({ code: 'KVANT_IO' }));
  });

  it('a tensor stored unaligned (other writers do not pad) is copied to aligned memory; ours stay aligned', () => {
    const p = rawFile({ a: { dtype: 'U8', shape: [3], data_offsets: [0, 3] }, w: { dtype: 'F32', shape: [2], data_offsets: [3, 11] } }, 11);
    const f = SafetensorsFile.open(p);
    const w = f.tensor('w');
    expect(w.numel).toBe(2);
    expect(w.byteOffset % 4).toBe(0);
    f.close();
    const dir = tmp();
    writeSafetensors(path.join(dir, 'm.safetensors'), [['u', Tensor.zeros([3], 'u8')], ['h', Tensor.zeros([3], 'bf16')], ['f', Tensor.zeros([3], 'f32')]]);
    const g = SafetensorsFile.open(path.join(dir, 'm.safetensors'));
    expect(g.entry('f').begin % 4).toBe(0);
    expect(g.tensor('f').storage.kind).toBe('native');
    g.close();
  });

  it('tensors of dtypes kvant does not load are KVANT_DTYPE; others still load', () => {
    const p = rawFile({ ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] }, w: { dtype: 'F32', shape: [2], data_offsets: [16, 24] } }, 24);
    const f = SafetensorsFile.open(p);
    expect(() => f.tensor('ids')).toThrow(expect.objectContaining({ code: 'KVANT_DTYPE' }));
    expect(f.tensor('w').numel).toBe(2);
    f.close();
  });
});
