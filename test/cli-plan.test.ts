import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LITE } from './helpers/configs';

const root = path.join(__dirname, '..');
const kvant = (args: string[]) => spawnSync(process.execPath, ['bin/kvant.js', ...args], { cwd: root, encoding: 'utf8' });

describe('kvant plan', () => {
  it('prints machine-readable JSON with nothing else on stdout', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-plan-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(LITE));
    const r = kvant(['plan', '--model', dir, '--bits', '4', '--context', '1000', '--kv-cache', 'q8', '--json']);
    expect(r.status).toBe(0);
    const p = JSON.parse(r.stdout);
    expect(Object.keys(p).sort()).toEqual(['available_bytes', 'fits', 'kv_bytes', 'kv_bytes_per_token', 'total_bytes', 'weights_bytes']);
    expect(p.kv_bytes_per_token).toBe(27 * (512 * 1.0625 + 128));
    expect(p.kv_bytes).toBe(1000 * p.kv_bytes_per_token);
    expect(typeof p.fits).toBe('boolean');
  });

  it('bad arguments and configs exit non-zero with the error code on stderr', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-plan-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...LITE, hidden_size: -3 }));
    const r = kvant(['plan', '--model', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('KVANT_FORMAT');
    expect(r.stderr).toContain('hidden_size');
    expect(kvant(['plan', '--model', '/nonexistent']).stderr).toContain('KVANT_IO');
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(LITE));
    expect(kvant(['plan', '--model', dir, '--bits', '5']).stderr).toContain('KVANT_RANGE');
  });
});
