/**
 * Thin typed wrappers over the native KV row writer/reader and the paged decode kernel.
 * Internal to lib/kv: the caches validate shapes first; the kernels re-check every slot and
 * page index (KVANT_RANGE) so a bad table can never touch memory outside the pool.
 */
import { callNative, expected } from '../errors';
import { RawStorage, native } from '../native';
import { IsaLevel } from '../ops/small';
import { Tensor } from '../tensor';
import { KvSegmentDesc, packSegments } from './format';

const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

/** Native ISA code for an optional level (tests pin levels; default = the chosen one). */
export function isaCode(isa?: IsaLevel): number | undefined {
  if (isa === undefined) return undefined;
  if (!(isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', isa);
  return ISA[isa];
}

const bytes = (a: Int32Array): [RawStorage, number, number] => [new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 0, a.byteLength];

function t3(t: Tensor): [RawStorage, number, number] {
  const [s, o] = t.rawArgs();
  return [s, o, t.byteLength];
}

/** Page geometry of one layer. */
export interface LayerPages {
  pool: Tensor;
  numPages: number;
  pageSize: number;
  pageBytes: number;
  layerOffset: number;
  rowBytes: number;
}

function pageArgs(p: LayerPages): [RawStorage, number, number, number, number, number, number, number] {
  return [...t3(p.pool), p.numPages, p.pageSize, p.pageBytes, p.layerOffset, p.rowBytes];
}

// A cache's segment list and decode layout never change, so each is packed once (the packing
// allocated on every append and decode call of a decode step).
const packedSegs = new WeakMap<readonly KvSegmentDesc[], Int32Array>();
function packedSegments(segs: readonly KvSegmentDesc[]): Int32Array {
  let s = packedSegs.get(segs);
  if (!s) {
    s = packSegments(segs);
    packedSegs.set(segs, s);
  }
  return s;
}

/** Encodes dense rows into their slots of one layer (native; slots range-checked there). */
export function writeRows(p: LayerPages, segs: readonly KvSegmentDesc[], rows: Tensor, width: number, slots: Int32Array, isa?: IsaLevel): void {
  const s = packedSegments(segs);
  callNative(() => native().kvWrite(...pageArgs(p), ...bytes(s), segs.length, ...t3(rows), width, slots.length, ...bytes(slots), isaCode(isa)));
}

/** Decodes the rows at `slots` of one layer into `out` (original domain). */
export function readRows(p: LayerPages, segs: readonly KvSegmentDesc[], out: Tensor, width: number, slots: Int32Array, isa?: IsaLevel): void {
  const s = packedSegments(segs);
  callNative(() => native().kvRead(...pageArgs(p), ...bytes(s), segs.length, ...t3(out), width, slots.length, ...bytes(slots), isaCode(isa)));
}

/** Layout of the key and value inside a row, as pagedDecode takes it. */
export interface DecodeLayout {
  k0: KvSegmentDesc;
  k1: KvSegmentDesc;
  v: KvSegmentDesc;
  headStride: number;
  vFromKey: boolean;
}

// Layouts are packed once per layout object (callers keep theirs; a new object is packed anew).
const packedLayouts = new WeakMap<DecodeLayout, Int32Array>();

/** Batched paged decode attention over one layer (see csrc/cpu/attention.h `pagedDecode`). */
export function pagedDecodeRaw(
  q: Tensor, out: Tensor, lse: Tensor, B: number, Hq: number, Hkv: number, scale: number, p: LayerPages,
  pageTable: Int32Array, maxPages: number, seqLens: Int32Array, layout: DecodeLayout, isa?: IsaLevel,
): void {
  let lay = packedLayouts.get(layout);
  if (!lay) {
    lay = packSegments([layout.k0, layout.k1, layout.v], [layout.headStride, layout.vFromKey ? 1 : 0]);
    packedLayouts.set(layout, lay);
  }
  callNative(() =>
    native().pagedDecode(...t3(q), ...t3(out), ...t3(lse), B, Hq, Hkv, scale, ...pageArgs(p), ...bytes(pageTable), maxPages, ...bytes(seqLens), ...bytes(lay), isaCode(isa)),
  );
}
