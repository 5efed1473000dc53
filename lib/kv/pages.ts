/**
 * The page allocator shared by the KV caches (vLLM-style paging). One pool of fixed-size
 * pages in native memory; a page holds `pageSize` tokens of every layer. Pages are
 * refcounted so forked sequences share their prefix (copy-on-write on the first write into a
 * shared page). A budget caps the pool; exceeding it is KVANT_OOM naming needed vs available.
 */
import * as os from 'node:os';
import { KvantError, expected } from '../errors';
import { Tensor } from '../tensor';

/** Admission answer: `ok` fits now, `wait` fits once other sequences free pages, `never` cannot fit. */
export interface Admission {
  verdict: 'ok' | 'wait' | 'never';
  /** Bytes the request needs. */
  needed: number;
  /** Bytes available now. */
  available: number;
}

/** One sequence's pages and per-layer lengths. */
export interface SeqState {
  pages: number[];
  lengths: number[];
  /** Pages kept even when truncated below them (the open() reservation). */
  reservedPages: number;
}

const MAX_COPY = 1 << 30;

/**
 * What SequenceTable needs of a page allocator: PagePool (host pages in native memory) and the
 * device caches' page book (lib/cuda/rows.ts: accounting only, the pages live on the device).
 */
export interface PageAccounting {
  readonly pageBytes: number;
  readonly usedPages: number;
  admission(pages: number): Admission;
  /** KVANT_OOM (needed vs available) unless `pages` more pages fit now. */
  require(pages: number, what: string): void;
  alloc(what: string): number;
  incref(p: number): void;
  decref(p: number): void;
  refcount(p: number): number;
  copyOnWrite(src: number, what: string): number;
}

/** Fixed-size pages with refcounts, a free list and an optional byte budget. */
export class PagePool implements PageAccounting {
  readonly pageBytes: number;
  /** Page cap from the budget (Infinity without a budget). */
  readonly maxPages: number;
  private pool: Tensor | null = null;
  private capacity = 0;
  private refs: number[] = [];
  private free: number[] = [];
  private used = 0;
  private disposed = false;

  constructor(pageBytes: number, budgetBytes?: number) {
    if (!Number.isSafeInteger(pageBytes) || pageBytes <= 0) throw expected('KVANT_RANGE', 'a positive integer', 'pageBytes', pageBytes);
    if (budgetBytes !== undefined && (!Number.isFinite(budgetBytes) || budgetBytes < 0))
      throw expected('KVANT_RANGE', 'a non-negative finite number of bytes', 'budgetBytes', budgetBytes);
    this.pageBytes = pageBytes;
    this.maxPages = budgetBytes === undefined ? Infinity : Math.floor(budgetBytes / pageBytes);
  }

  /** Pages in use (refcount > 0). */
  get usedPages(): number {
    return this.used;
  }

  /** The pool tensor (u8, native). Re-read after any allocation: growing replaces it. */
  storage(): Tensor {
    this.live();
    if (!this.pool) this.grow(1);
    return this.pool as Tensor;
  }

  get numPages(): number {
    return this.capacity;
  }

  /** Bytes that could be allocated now. */
  availableBytes(): number {
    if (this.maxPages !== Infinity) return (this.maxPages - this.used) * this.pageBytes;
    return (this.capacity - this.used) * this.pageBytes + os.freemem();
  }

  /** Bytes the pool could ever hold. */
  limitBytes(): number {
    return this.maxPages !== Infinity ? this.maxPages * this.pageBytes : os.totalmem();
  }

  admission(pages: number): Admission {
    const needed = pages * this.pageBytes;
    const available = this.availableBytes();
    return { verdict: needed <= available ? 'ok' : needed <= this.limitBytes() ? 'wait' : 'never', needed, available };
  }

  /** Throws KVANT_OOM unless `pages` more pages fit. */
  require(pages: number, what: string): void {
    if (pages <= 0) return;
    const a = this.admission(pages);
    if (a.verdict !== 'ok')
      throw new KvantError('KVANT_OOM', `${what} needs ${a.needed} bytes (${pages} pages of ${this.pageBytes}) but ${a.available} bytes are available within the KV cache budget`);
  }

  alloc(what: string): number {
    this.live();
    this.require(1, what);
    if (this.free.length === 0) this.grow(this.capacity + 1);
    const p = this.free.pop() as number;
    this.refs[p] = 1;
    this.used++;
    return p;
  }

  incref(p: number): void {
    this.refs[p]++;
  }

  decref(p: number): void {
    if (--this.refs[p] === 0) {
      this.used--;
      this.free.push(p);
    }
  }

  refcount(p: number): number {
    return this.refs[p] ?? 0;
  }

  /** Copies page `src` into a fresh page (copy-on-write) and drops one reference to src. */
  copyOnWrite(src: number, what: string): number {
    const dst = this.alloc(what);
    const pool = this.storage();
    const from = src * this.pageBytes;
    const to = dst * this.pageBytes;
    for (let o = 0; o < this.pageBytes; o += MAX_COPY) {
      const n = Math.min(MAX_COPY, this.pageBytes - o);
      pool.byteView(to + o, n).set(pool.byteView(from + o, n));
    }
    this.decref(src);
    return dst;
  }

  private grow(minPages: number): void {
    const cap = Math.min(this.maxPages, Math.max(minPages, this.capacity * 2, 4));
    if (cap < minPages) throw new KvantError('KVANT_OOM', `KV cache pool needs ${minPages} pages but the budget allows ${this.maxPages}`);
    const next = Tensor.zeros([cap * this.pageBytes], 'u8', { native: true });
    if (this.pool) {
      const bytes = this.capacity * this.pageBytes;
      for (let o = 0; o < bytes; o += MAX_COPY) {
        const n = Math.min(MAX_COPY, bytes - o);
        next.byteView(o, n).set(this.pool.byteView(o, n));
      }
      this.pool.dispose();
    }
    for (let p = cap - 1; p >= this.capacity; p--) {
      this.refs[p] = 0;
      this.free.push(p);
    }
    // Lowest page ids first (free is a stack).
    this.free.sort((a, b) => b - a);
    this.pool = next;
    this.capacity = cap;
  }

  private live(): void {
    if (this.disposed) throw new KvantError('KVANT_RANGE', 'Expected a live KV cache but it was disposed');
  }

  dispose(): void {
    this.pool?.dispose();
    this.pool = null;
    this.capacity = 0;
    this.refs = [];
    this.free = [];
    this.used = 0;
    this.disposed = true;
  }
}

/**
 * Sequences over a PagePool: page tables, lengths per layer, reservation, slots for writes
 * (with copy-on-write), truncate, fork and close. Both caches build on this.
 */
export class SequenceTable {
  readonly pool: PageAccounting;
  readonly pageSize: number;
  readonly layers: number;
  private seqs = new Map<number, SeqState>();
  private nextId = 1;

  constructor(pool: PageAccounting, pageSize: number, layers: number) {
    this.pool = pool;
    this.pageSize = pageSize;
    this.layers = layers;
  }

  pagesFor(tokens: number): number {
    return Math.ceil(tokens / this.pageSize);
  }

  get(seq: number): SeqState {
    const s = typeof seq === 'number' ? this.seqs.get(seq) : undefined;
    if (!s) throw expected('KVANT_RANGE', 'an open sequence id', 'seq', seq);
    return s;
  }

  layer(layer: number): number {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) throw expected('KVANT_RANGE', `a layer in 0..${this.layers - 1}`, 'layer', layer);
    return layer;
  }

  open(reserveTokens: number): number {
    if (!Number.isSafeInteger(reserveTokens) || reserveTokens < 0) throw expected('KVANT_RANGE', 'a non-negative integer', 'reserveTokens', reserveTokens);
    const n = this.pagesFor(reserveTokens);
    this.pool.require(n, `Reserving ${reserveTokens} tokens`);
    const pages: number[] = [];
    for (let i = 0; i < n; i++) pages.push(this.pool.alloc(`Reserving ${reserveTokens} tokens`));
    const id = this.nextId++;
    this.seqs.set(id, { pages, lengths: new Array(this.layers).fill(0), reservedPages: n });
    return id;
  }

  /**
   * Slots (page·pageSize + position % pageSize) for rows [length, length + T) of one layer,
   * allocating pages past the table and copying shared pages before they are written.
   * Throws KVANT_OOM before changing anything when the pages do not fit.
   */
  slotsForAppend(seq: number, layer: number, T: number): Int32Array {
    const s = this.get(seq);
    const start = s.lengths[layer];
    const end = start + T;
    const firstPage = Math.floor(start / this.pageSize);
    const lastPage = this.pagesFor(end);
    let fresh = Math.max(0, lastPage - s.pages.length);
    for (let p = firstPage; p < Math.min(lastPage, s.pages.length); p++) if (this.pool.refcount(s.pages[p]) > 1) fresh++;
    this.pool.require(fresh, `Appending ${T} tokens at position ${start}`);
    for (let p = firstPage; p < lastPage; p++) {
      if (p >= s.pages.length) s.pages.push(this.pool.alloc('append'));
      else if (this.pool.refcount(s.pages[p]) > 1) s.pages[p] = this.pool.copyOnWrite(s.pages[p], 'append');
    }
    const slots = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      const pos = start + t;
      slots[t] = s.pages[Math.floor(pos / this.pageSize)] * this.pageSize + (pos % this.pageSize);
    }
    return slots;
  }

  /** Slots of rows [start, end) already stored in `layer`. */
  slotsForRead(seq: number, layer: number, start: number, end: number): Int32Array {
    const s = this.get(seq);
    const len = s.lengths[layer];
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > len)
      throw new KvantError('KVANT_RANGE', `Expected 0 <= start <= end <= ${len} (rows stored in layer ${layer}) but received [${start}, ${end})`);
    const slots = new Int32Array(end - start);
    for (let t = start; t < end; t++) slots[t - start] = s.pages[Math.floor(t / this.pageSize)] * this.pageSize + (t % this.pageSize);
    return slots;
  }

  /** Page table [B, maxPages] and lengths of `layer` for a batch of sequences. */
  batch(seqs: readonly number[], layer: number): { pageTable: Int32Array; maxPages: number; seqLens: Int32Array } {
    const states = seqs.map((q) => this.get(q));
    const maxPages = Math.max(1, ...states.map((s) => this.pagesFor(s.lengths[layer])));
    const pageTable = new Int32Array(seqs.length * maxPages);
    const seqLens = new Int32Array(seqs.length);
    states.forEach((s, b) => {
      seqLens[b] = s.lengths[layer];
      for (let p = 0; p < this.pagesFor(s.lengths[layer]); p++) pageTable[b * maxPages + p] = s.pages[p];
    });
    return { pageTable, maxPages, seqLens };
  }

  truncate(seq: number, tokens: number): void {
    const s = this.get(seq);
    if (!Number.isSafeInteger(tokens) || tokens < 0) throw expected('KVANT_RANGE', 'a non-negative integer', 'tokens', tokens);
    for (let l = 0; l < this.layers; l++) s.lengths[l] = Math.min(s.lengths[l], tokens);
    const keep = Math.max(this.pagesFor(tokens), s.reservedPages);
    while (s.pages.length > keep) this.pool.decref(s.pages.pop() as number);
  }

  fork(seq: number): number {
    const s = this.get(seq);
    for (const p of s.pages) this.pool.incref(p);
    const id = this.nextId++;
    // The fork owns no reservation: its pages are shared, and truncating it releases them.
    this.seqs.set(id, { pages: [...s.pages], lengths: [...s.lengths], reservedPages: 0 });
    return id;
  }

  close(seq: number): void {
    const s = this.get(seq);
    for (const p of s.pages) this.pool.decref(p);
    this.seqs.delete(seq);
  }
}

/**
 * The sequence API every paged cache offers over its page accounting and sequence table (the
 * host caches of lib/kv and the device caches of lib/cuda): admission, open, length, truncate,
 * close, bytes in use.
 */
export abstract class SequenceCache {
  protected abstract readonly pool: PageAccounting;
  protected abstract readonly seqs: SequenceTable;

  /** Can `tokens` more tokens be admitted now (ok), later (wait) or never within the budget? */
  admission(tokens: number): Admission {
    if (!Number.isSafeInteger(tokens) || tokens < 0) throw expected('KVANT_RANGE', 'a non-negative integer', 'tokens', tokens);
    return this.pool.admission(this.seqs.pagesFor(tokens));
  }

  /** Opens a sequence and reserves pages for `reserveTokens` tokens (KVANT_OOM: needed vs available). */
  open(reserveTokens: number): number {
    return this.seqs.open(reserveTokens);
  }

  /** Rows stored in `layer` (default 0) of a sequence. */
  length(seq: number, layer = 0): number {
    return this.seqs.get(seq).lengths[this.seqs.layer(layer)];
  }

  /** Keeps the first `tokens` rows of every layer; pages past them (and past the reservation) are freed. */
  truncate(seq: number, tokens: number): void {
    this.seqs.truncate(seq, tokens);
  }

  /** Closes a sequence and frees its pages. */
  close(seq: number): void {
    this.seqs.close(seq);
  }

  /** Bytes of the pages in use. */
  usedBytes(): number {
    return this.pool.usedPages * this.pool.pageBytes;
  }
}
