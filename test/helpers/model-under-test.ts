/**
 * Which model class the end-to-end tests load: the real DeepSeekV2Model (undefined: the
 * default), or, until it exists in dist/, the test stand-in with the same shape.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const real = path.join(__dirname, '..', '..', 'dist', 'models', 'deepseek-v2', 'model.js');
export const FAKE_MODEL = { module: path.join(__dirname, 'fake-model.cjs'), export: 'FakeModel' };
export const MODEL_UNDER_TEST: { module: string; export: string } | undefined = fs.existsSync(real) ? undefined : FAKE_MODEL;
