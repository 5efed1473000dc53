#!/usr/bin/env node
// An OpenAI-compatible HTTP service over kvant, with nothing but node:http.
//
//   node examples/openai-server.mjs --model DIR [--port 8080] [--host 127.0.0.1] [--kv-cache bf16]
//                                   [--max-batch 16] [--max-wait-ms 2]
//
// It loads the model once and serves every client through kvant's continuous-batching
// scheduler: concurrent requests share decode steps. Endpoints:
//   GET  /v1/models
//   POST /v1/completions        {prompt, max_tokens, temperature, top_p, seed, stop, stream}
//   POST /v1/chat/completions   {messages, max_tokens, temperature, top_p, seed, stop, stream}
// With "stream": true the answer is Server-Sent Events in OpenAI's chunk format, ending with
// "data: [DONE]". A client that disconnects aborts its generation (its KV pages are freed).
import * as http from 'node:http';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { loadModel } from 'kvant';

const MAX_BODY = 1 << 20;

export async function createServer(o) {
  const model = await loadModel(o.model, { kvCache: o.kvCache, maxBatchSize: o.maxBatchSize, maxWaitMs: o.maxWaitMs });
  const modelId = o.modelId ?? path.basename(path.resolve(o.model));
  let nextId = 0;

  const send = (res, status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  const fail = (res, status, message, code = null) => send(res, status, { error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', code } });

  const readBody = (req) =>
    new Promise((resolve, reject) => {
      let size = 0;
      const parts = [];
      req.on('data', (c) => {
        size += c.length;
        if (size > MAX_BODY) reject(Object.assign(new Error(`request body over ${MAX_BODY} bytes`), { status: 413 }));
        else parts.push(c);
      });
      req.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(parts).toString('utf8') || '{}'));
        } catch {
          reject(Object.assign(new Error('request body is not valid JSON'), { status: 400 }));
        }
      });
      req.on('error', reject);
    });

  // OpenAI request fields -> kvant GenerateOptions.
  const options = (body, signal) => {
    const stop = body.stop === undefined || body.stop === null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop];
    return {
      maxTokens: body.max_tokens ?? 16,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      seed: body.seed ?? 0,
      stopStrings: stop.map(String),
      signal,
    };
  };

  async function complete(req, res, chat) {
    const body = await readBody(req);
    let prompt;
    if (chat) {
      if (!Array.isArray(body.messages) || body.messages.length === 0) return fail(res, 400, 'messages must be a non-empty array');
      prompt = { messages: body.messages.map((m) => ({ role: m.role, content: String(m.content ?? '') })) };
    } else {
      prompt = Array.isArray(body.prompt) ? body.prompt : String(body.prompt ?? '');
      if (prompt.length === 0) return fail(res, 400, 'prompt must be a non-empty string or token array');
    }
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${Date.now().toString(36)}${(nextId++).toString(36)}`;
    const created = Math.floor(Date.now() / 1000);
    // A client that goes away mid-generation aborts it: the scheduler drops the sequence.
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    const opts = options(body, ac.signal);
    const object = chat ? 'chat.completion' : 'text_completion';
    const finish = (r) => (r === 'length' ? 'length' : 'stop');
    const usage = (u) => ({ prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens });

    if (!body.stream) {
      const r = await model.generate(prompt, opts);
      const choice = chat
        ? { index: 0, message: { role: 'assistant', content: r.text ?? '' }, finish_reason: finish(r.finishReason) }
        : { index: 0, text: r.text ?? '', tokens: r.tokens, finish_reason: finish(r.finishReason) };
      return send(res, 200, { id, object, created, model: modelId, choices: [choice], usage: usage(r.usage) });
    }

    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const event = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
    const chunkObject = chat ? 'chat.completion.chunk' : 'text_completion';
    const delta = (text, token, first) =>
      chat ? { index: 0, delta: first ? { role: 'assistant', content: text } : { content: text }, finish_reason: null } : { index: 0, text, token, finish_reason: null };
    const stream = model.stream(prompt, opts);
    let first = true;
    for await (const c of stream) {
      if (res.destroyed) break;
      event({ id, object: chunkObject, created, model: modelId, choices: [delta(c.text ?? '', c.token, first)] });
      first = false;
    }
    const r = await stream.result;
    if (!res.destroyed) {
      const last = chat ? { index: 0, delta: {}, finish_reason: finish(r.finishReason) } : { index: 0, text: '', finish_reason: finish(r.finishReason) };
      event({ id, object: chunkObject, created, model: modelId, choices: [last], usage: usage(r.usage) });
      res.end('data: [DONE]\n\n');
    }
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const route =
      req.method === 'GET' && url.pathname === '/v1/models'
        ? async () => send(res, 200, { object: 'list', data: [{ id: modelId, object: 'model', created: 0, owned_by: 'kvant' }] })
        : req.method === 'POST' && url.pathname === '/v1/completions'
          ? () => complete(req, res, false)
          : req.method === 'POST' && url.pathname === '/v1/chat/completions'
            ? () => complete(req, res, true)
            : async () => fail(res, 404, `no route ${req.method} ${url.pathname}`);
    route().catch((e) => {
      if (res.headersSent) return res.destroy(e);
      // kvant's typed errors: bad input is the client's fault, KVANT_OOM means "try later".
      const status = e.status ?? (e.code === 'KVANT_OOM' ? 503 : typeof e.code === 'string' && e.code.startsWith('KVANT_') && e.code !== 'KVANT_BACKEND' && e.code !== 'KVANT_IO' ? 400 : 500);
      fail(res, status, e.message, e.code ?? null);
    });
  });
  server.on('close', () => void model.close());
  return { server, model };
}

const isMain = process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname);
if (isMain) {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      port: { type: 'string', default: '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      'kv-cache': { type: 'string', default: 'bf16' },
      'max-batch': { type: 'string', default: '16' },
      'max-wait-ms': { type: 'string', default: '2' },
    },
  });
  if (!values.model) {
    console.error('usage: node examples/openai-server.mjs --model DIR [--port 8080] [--host 127.0.0.1]');
    process.exit(2);
  }
  const { server } = await createServer({
    model: values.model,
    kvCache: values['kv-cache'],
    maxBatchSize: Number(values['max-batch']),
    maxWaitMs: Number(values['max-wait-ms']),
  });
  server.listen(Number(values.port), values.host, () => {
    const a = server.address();
    console.error(`kvant OpenAI-compatible server on http://${a.address}:${a.port}/v1`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
