// The gateway process: an OpenAI-compatible HTTP API in front of the cluster. It checks every
// request, tokenizes with the model's vocabulary, sends tokens to the coordinator over NATS and
// streams the answer back as JSON or server-sent events.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { LlamaError, Sampler } from '@strata/ggml';
import type { Logger } from '@strata/log';
import {
  ClusterStateSchema, ClusterRequestSchema, FenceVerifier, isSessionKey, sessionKey, DrainReplySchema, DrainRequestSchema, MigrateReplySchema, MigrateRequestSchema, MigrationListSchema, MigrationsRequestSchema, SessionListSchema, SessionsRequestSchema, UndrainReplySchema, UndrainRequestSchema, isId,
  connectNats, drainNats, migrationJson, request, sessionJson, subjects, toJson, type ClusterState,
} from '@strata/wire';
import type { NatsConnection } from 'nats';
import type { GatewayConfig } from './config.ts';
import { ApiKeys, cacheScope, type Caller } from './api-keys.ts';
import { ApiError, fromAdminError } from './errors.ts';
import { dashboardPage, type DashboardPage } from './dashboard.ts';
import { runGeneration, type GenerationDeps, type GenerationSink, type Usage } from './generation.ts';
import { EventRouter } from './event-router.ts';
import { ResponseStore } from './response-store.ts';
import { ResponseOutput, parseResponses, responseBody, responseId, type EventWrite } from './responses-api.ts';
import { embeddingSpec, encodeEmbedding, parseEmbeddings, shorten } from './embeddings.ts';
import { failRequestSpan, traceHttp } from './http-telemetry.ts';
import { natsHeaders } from '@strata/telemetry';
import { checkGrammar, GrammarError } from './gbnf-limits.ts';
import { LeaderWatch } from './leader-watch.ts';
import { JsonSchemaError, jsonObjectGrammar, jsonSchemaGrammar, jsonSchemaRule } from './json-grammar.ts';
import type { GbnfBuilder } from './json-grammar-gbnf.ts';
import { jsonObject } from './json-grammar-primitives.ts';
import { parseChat, parseCompletion, type GenerationSpec } from './openai-request.ts';
import type { ResponseMeta } from './responses.ts';
import { Answer } from './answer.ts';
import { enforceableTools, toolGrammar, toolTurns, ToolSchemaError } from './tool-format.ts';
import { ServedModel } from './served-model.ts';

/** A running gateway. stop() is idempotent. */
export class Gateway {
  readonly #c: GatewayConfig;
  readonly #nc: NatsConnection;
  /** the models it serves, by id, in --model's order */
  readonly #models: ReadonlyMap<string, ServedModel>;
  readonly #server: Server;
  readonly #log: Logger;
  readonly #keys: ApiKeys | null;
  /** browser origins allowed to call (--cors-origins; '*' for any) */
  readonly #origins: Set<string>;
  readonly #leader: LeaderWatch;
  /** generations running now */
  #running = 0;
  /** the dashboard page, read on its first request */
  #dashboard: DashboardPage | null = null;
  /** responses of the Responses API kept for previous_response_id and GET /v1/responses/{id} */
  readonly #stored = new ResponseStore(RESPONSES_KEPT);
  /** the grammar of any JSON object (response_format json_object): the gateway's own, built once */
  #jsonObject: string | null = null;
  #stopping: Promise<void> | null = null;
  /** every request's events, batched per step by the coordinator */
  readonly #events: EventRouter;
  /** the address the gateway listens on, e.g. http://127.0.0.1:8080 */
  url = '';

  private constructor(c: GatewayConfig, nc: NatsConnection, models: ServedModel[], log: Logger) {
    this.#c = c;
    this.#nc = nc;
    this.#models = new Map(models.map((m) => [m.id, m]));
    this.#log = log;
    this.#keys = c.apiKeysFile ? ApiKeys.load(c.apiKeysFile) : null;
    this.#origins = new Set(c.corsOrigins.split(',').map((o) => o.trim()).filter(Boolean));
    this.#leader = new LeaderWatch(nc, log, c.leaderLapseMs, c.termPublicKeyFile ? FenceVerifier.fromPem(readFileSync(c.termPublicKeyFile)) : null);
    this.#events = new EventRouter(nc, log);
    this.#server = createServer((req, res) => void traceHttp(req, res, () => this.#handle(req, res)));
    // Idle keep-alive connections stay open longer than clients and load balancers keep theirs
    // (Node's 5 s would close under a client about to reuse the connection).
    this.#server.keepAliveTimeout = 65_000;
  }

  /** Loads the models' vocabularies, connects to NATS and listens. */
  static async start(c: GatewayConfig, log: Logger): Promise<Gateway> {
    const models: ServedModel[] = [];
    const dispose = () => models.forEach((m) => m.dispose());
    try {
      for (const m of c.models) models.push(ServedModel.load(m.id, m.path));
    } catch (err) {
      dispose();
      throw err;
    }
    const nc = await connectNats(c.natsUrl, 'strata-gateway', dispose);
    const g = new Gateway(c, nc, models, log);
    await new Promise<void>((resolve, reject) => {
      g.#server.once('error', reject);
      g.#server.listen(c.port, c.host, () => resolve());
    });
    const a = g.#server.address() as AddressInfo;
    g.url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    log.info('gateway ready', { url: g.url, models: c.models.map((m) => m.id).join(','), auth: g.#keys ? 'api keys' : 'none' });
    return g;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    try {
      this.#cors(req, res);
      // A browser's preflight carries no credentials: it is answered before any key is asked for.
      const allowed = allowedMethods(path);
      if (req.method === 'OPTIONS' && allowed) return this.#preflight(req, res, allowed);
      // Health and the dashboard page (it holds no data) are open; the OpenAI API needs a user
      // key, the admin API an admin key.
      // Without API keys, every caller is one open tenant.
      const open = path === '/healthz' || path === '/health' || path === '/readyz' || path === '/dashboard';
      const caller: Caller = this.#keys && !open ? this.#keys.require(req.headers.authorization, path.startsWith('/admin/') ? 'admin' : 'user') : { scope: 'admin', tenant: '' };
      const route = `${req.method ?? ''} ${path}`;
      switch (route) {
        case 'POST /v1/completions':
          return await this.#counted(() => this.#generateOne(req, res, caller, (b, s) => parseCompletion(b, s)));
        case 'POST /v1/chat/completions':
          return await this.#counted(() => this.#generateOne(req, res, caller, (b, s) => parseChat(b, s)));
        case 'POST /v1/embeddings':
          return await this.#counted(() => this.#embeddings(req, res, caller));
        case 'POST /v1/responses':
          return await this.#counted(() => this.#responses(req, res, caller));
        case 'GET /v1/models':
          return await this.#modelList(res);
        case 'GET /healthz':
        case 'GET /health':
          return json(res, 200, { status: 'ok' });
        case 'GET /readyz':
          return await this.#ready(res);
        case 'GET /dashboard':
          return this.#page(res);
      }
      const stored = /^\/v1\/responses\/([^/]+)$/.exec(path);
      if (stored && (req.method === 'GET' || req.method === 'DELETE')) return this.#storedResponse(req.method, res, caller, decodeURIComponent(stored[1]!));
      const model = /^\/v1\/models\/(.+)$/.exec(path);
      if (model && req.method === 'GET') return await this.#modelInfo(res, decodeURIComponent(model[1]!));
      const mig = /^\/admin\/v1\/sessions\/([^/]+)\/migrate$/.exec(path);
      if (mig && req.method === 'POST') return await this.#migrate(req, res, decodeURIComponent(mig[1]!));
      if (route === 'GET /admin/v1/migrations') return await this.#migrations(req, res);
      if (route === 'GET /admin/v1/sessions') return await this.#sessions(req, res);
      const drain = /^\/admin\/v1\/workers\/([^/]+)\/(drain|undrain)$/.exec(path);
      if (drain && req.method === 'POST') return await (drain[2] === 'drain' ? this.#drain(req, res, decodeURIComponent(drain[1]!)) : this.#undrain(res, decodeURIComponent(drain[1]!)));
      if (route === 'GET /admin/v1/cluster') return json(res, 200, toJson(ClusterStateSchema, await this.#cluster()));
      if (allowed) {
        const e = new ApiError(405, 'method_not_allowed', `${req.method ?? ''} is not allowed on ${path}; ${allowed.join(', ')} is`);
        e.headers = { allow: [...allowed, 'OPTIONS'].join(', ') };
        throw e;
      }
      throw new ApiError(404, 'not_found', `no route ${req.method ?? ''} ${path}`);
    } catch (err) {
      this.#fail(res, err);
    }
  }

  /** CORS headers for an allowed browser origin (--cors-origins). */
  #cors(req: IncomingMessage, res: ServerResponse): void {
    const origin = req.headers.origin;
    if (!origin || this.#origins.size === 0) return;
    if (!this.#origins.has('*') && !this.#origins.has(origin)) return;
    res.setHeader('access-control-allow-origin', this.#origins.has('*') ? '*' : origin);
    res.setHeader('vary', 'Origin');
    res.setHeader('access-control-expose-headers', 'retry-after, content-type');
  }

  /** An OPTIONS request: the methods a path takes, and for an allowed origin what CORS lets through. */
  #preflight(req: IncomingMessage, res: ServerResponse, allowed: string[]): void {
    const headers: Record<string, string> = { allow: [...allowed, 'OPTIONS'].join(', ') };
    if (res.hasHeader('access-control-allow-origin')) {
      headers['access-control-allow-methods'] = [...allowed, 'OPTIONS'].join(', ');
      headers['access-control-allow-headers'] = String(req.headers['access-control-request-headers'] ?? 'authorization, content-type');
      headers['access-control-max-age'] = '600';
    }
    res.writeHead(204, headers);
    res.end();
  }

  #fail(res: ServerResponse, err: unknown): void {
    const e = err instanceof ApiError ? err : new ApiError(500, 'internal', 'internal error');
    if (!(err instanceof ApiError)) this.#log.error('request failed', { err });
    if (e.status >= 500 || res.headersSent) failRequestSpan(e.code, e.message);
    if (res.headersSent) {
      // A stream already started: the error travels as its last event.
      if (!res.writableEnded) res.end(`data: ${JSON.stringify(e.body())}\n\ndata: [DONE]\n\n`);
      return;
    }
    json(res, e.status, e.body(), { ...e.headers, ...(e.retryAfter === null ? {} : { 'retry-after': String(e.retryAfter) }) });
  }

  /** A request/reply with the coordinator; no (decodable) answer is a 503. */
  async #ask<Req extends DescMessage, Rep extends DescMessage>(subject: string, req: Req, init: MessageInitShape<Req>, rep: Rep, timeoutMs: number): Promise<MessageShape<Rep>> {
    try {
      return await request(this.#nc, subject, req, init, rep, timeoutMs, natsHeaders());
    } catch (err) {
      throw new ApiError(503, 'coordinator_unavailable', `no coordinator answered: ${(err as Error).message}`);
    }
  }

  #cluster(): Promise<ClusterState> {
    return this.#ask(subjects.coordinatorCluster(), ClusterRequestSchema, {}, ClusterStateSchema, 2000);
  }

  async #modelList(res: ServerResponse): Promise<void> {
    json(res, 200, { object: 'list', data: (await this.#served()).map(modelObject) });
  }

  /** GET /v1/models/{id}: the model, if a pipeline serves it for this gateway. */
  async #modelInfo(res: ServerResponse, id: string): Promise<void> {
    this.#model(id);
    if (!(await this.#served()).includes(id)) throw new ApiError(404, 'model_not_found', `no pipeline serves the model '${id}' now`, 'model');
    json(res, 200, modelObject(id));
  }

  /** The model a request names: one this gateway serves, else a 404. */
  #model(id: string): ServedModel {
    const m = this.#models.get(id);
    if (!m) throw new ApiError(404, 'model_not_found', `the model '${id}' does not exist; this gateway serves ${[...this.#models.keys()].map((k) => `'${k}'`).join(', ')}`, 'model');
    return m;
  }

  /** The gateway's models that some pipeline serves, in --model's order. */
  async #served(): Promise<string[]> {
    const state = await this.#cluster();
    const up = new Set(state.pipelines.map((p) => p.modelId));
    return [...this.#models.keys()].filter((id) => up.has(id));
  }

  /**
   * Ready when a pipeline can take work for one of the gateway's models: one is up (every stage
   * heartbeating) and not draining. A full queue does not count against it (that is a 429, gone
   * in a moment); a pipeline that is draining does (it takes no request until undrained). One
   * model without a pipeline (still loading, or scaled to none) does not take the others' service
   * away: its requests get 503 no_pipeline; `models` tells each one's pipelines.
   */
  async #ready(res: ServerResponse): Promise<void> {
    if (this.#stopping) throw new ApiError(503, 'not_ready', 'stopping');
    if (this.#nc.isClosed()) throw new ApiError(503, 'not_ready', 'not connected to NATS');
    const state = await this.#cluster();
    const models: Record<string, { pipelines: number; draining: number }> = {};
    for (const id of this.#models.keys()) {
      const mine = state.pipelines.filter((p) => p.modelId === id);
      const serving = mine.filter((p) => !p.draining).length;
      models[id] = { pipelines: serving, draining: mine.length - serving };
    }
    const all = Object.values(models);
    const serving = all.reduce((n, m) => n + m.pipelines, 0), draining = all.reduce((n, m) => n + m.draining, 0);
    const names = [...this.#models.keys()].join(', ');
    if (serving + draining === 0) throw new ApiError(503, 'not_ready', `no pipeline serves ${names} yet`);
    if (serving === 0) throw new ApiError(503, 'not_ready', `no pipeline can take work: the ${draining} pipeline(s) of ${names} are draining`);
    json(res, 200, { status: 'ready', pipelines: serving, draining, models });
  }

  async #migrate(req: IncomingMessage, res: ServerResponse, session: string): Promise<void> {
    if (!isSessionKey(session)) throw new ApiError(400, 'invalid_value', 'a session is [<tenant>:]<id> (as GET /admin/v1/sessions lists it): tenant 1-40 of A-Z a-z 0-9 -, id 1-128 of A-Z a-z 0-9 _ -', 'session_id');
    const raw = await readJson(req, this.#c.maxBodyBytes, true);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
    const b = raw as Record<string, unknown>;
    for (const k of Object.keys(b)) if (!['to', 'wait', 'reason'].includes(k)) throw new ApiError(400, 'unknown_parameter', `unknown parameter '${k}'`, k);
    if (b.to !== undefined && typeof b.to !== 'string') throw new ApiError(400, 'invalid_value', "'to' is a pipeline id", 'to');
    if (b.wait !== undefined && typeof b.wait !== 'boolean') throw new ApiError(400, 'invalid_value', "'wait' is a boolean", 'wait');
    if (b.reason !== undefined && typeof b.reason !== 'string') throw new ApiError(400, 'invalid_value', "'reason' is a string", 'reason');
    const reply = await this.#ask(subjects.coordinatorMigrate(), MigrateRequestSchema, {
      sessionId: session, toPipeline: (b.to as string | undefined) ?? '', wait: (b.wait as boolean | undefined) ?? false, reason: (b.reason as string | undefined) ?? 'operator',
    }, MigrateReplySchema, this.#c.timeoutMs);
    if (reply.error) throw fromAdminError(reply.error.code, reply.error.message);
    json(res, 202, migrationJson(reply.migration!));
  }

  async #drain(req: IncomingMessage, res: ServerResponse, worker: string): Promise<void> {
    if (!isId(worker)) throw new ApiError(400, 'invalid_value', 'a worker id is 1-128 of A-Z a-z 0-9 _ -', 'worker_id');
    const raw = await readJson(req, this.#c.maxBodyBytes, true);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
    const b = raw as Record<string, unknown>;
    for (const k of Object.keys(b)) if (k !== 'force') throw new ApiError(400, 'unknown_parameter', `unknown parameter '${k}'`, k);
    if (b.force !== undefined && typeof b.force !== 'boolean') throw new ApiError(400, 'invalid_value', "'force' is a boolean", 'force');
    const reply = await this.#ask(subjects.coordinatorDrain(), DrainRequestSchema, { workerId: worker, force: b.force === true }, DrainReplySchema, 600_000);
    if (reply.error) throw fromAdminError(reply.error.code, reply.error.message);
    json(res, 200, { pipeline: reply.pipelineId, migrations: reply.migrations.map(migrationJson), waited: reply.waited, failed: reply.failed, undrained: reply.undrained });
  }

  async #undrain(res: ServerResponse, worker: string): Promise<void> {
    if (!isId(worker)) throw new ApiError(400, 'invalid_value', 'a worker id is 1-128 of A-Z a-z 0-9 _ -', 'worker_id');
    const reply = await this.#ask(subjects.coordinatorUndrain(), UndrainRequestSchema, { workerId: worker }, UndrainReplySchema, 10_000);
    if (reply.error) throw fromAdminError(reply.error.code, reply.error.message);
    json(res, 200, { pipeline: reply.pipelineId, workers: reply.workers });
  }

  async #migrations(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const q = new URL(req.url ?? '/', 'http://x').searchParams.get('limit');
    const limit = q === null ? 100 : Number(q);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ApiError(400, 'invalid_value', "'limit' is 1-1000", 'limit');
    const list = await this.#ask(subjects.coordinatorMigrations(), MigrationsRequestSchema, { limit }, MigrationListSchema, 5000);
    json(res, 200, { object: 'list', data: list.migrations.map(migrationJson) });
  }

  async #sessions(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const q = new URL(req.url ?? '/', 'http://x').searchParams.get('limit');
    const limit = q === null ? 1000 : Number(q);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new ApiError(400, 'invalid_value', "'limit' is 1-10000", 'limit');
    const list = await this.#ask(subjects.coordinatorSessions(), SessionsRequestSchema, { limit }, SessionListSchema, 5000);
    json(res, 200, { object: 'list', data: list.sessions.map(sessionJson), total: list.total });
  }

  #page(res: ServerResponse): void {
    this.#dashboard ??= dashboardPage();
    res.writeHead(200, this.#dashboard.headers);
    res.end(this.#dashboard.body);
  }

  /**
   * The request's grammar ('' for none), compiled here once, before anything reaches the cluster:
   * a JSON schema (or a turn that must call tools) into GBNF, then the grammar held to the
   * configured limits and parsed by libllama as the last stage will parse it. Whatever fails is a
   * 400 naming why.
   */
  #grammar(spec: GenerationSpec, m: ServedModel): string {
    const limits = this.#c.grammar;
    const calling = spec.tools.choice.mode !== 'none';
    let grammar: string, param: string, what: string;
    if (spec.grammar !== null) {
      if (spec.responseFormat.type !== 'text') throw new ApiError(400, 'invalid_value', "give either 'grammar' or a JSON 'response_format', not both", 'grammar');
      if (calling) throw new ApiError(400, 'invalid_value', "give either 'grammar' or 'tools' (or tool_choice 'none'), not both", 'grammar');
      [grammar, param, what] = [spec.grammar, 'grammar', ''];
    } else if (calling && (spec.tools.choice.mode === 'required' || spec.responseFormat.type !== 'text')) {
      [grammar, param, what] = [this.#toolsGrammar(spec, m), 'tools', 'the tools compile to a grammar that fails: '];
    } else if (spec.responseFormat.type === 'json_object') {
      return (this.#jsonObject ??= jsonObjectGrammar());
    } else if (spec.responseFormat.type === 'json_schema') {
      param = 'response_format.json_schema.schema';
      this.#schemaBytes(spec.responseFormat.schema, param);
      grammar = schemaGrammar(() => jsonSchemaGrammar((spec.responseFormat as { schema: unknown }).schema), param);
      what = 'the JSON schema compiles to a grammar that fails: ';
    } else {
      // Tools offered with tool_choice auto: the model may answer or call, unconstrained; a
      // strict tool's schema must still be one the grammar could enforce.
      if (calling) this.#enforceable(spec);
      return '';
    }
    if (grammar === '') return '';
    try {
      checkGrammar(grammar, limits, (piece) => m.vocab.tokenize(piece, false, true).length === 1);
      Sampler.checkGrammar(m.vocab, grammar);
    } catch (err) {
      if (err instanceof GrammarError) throw new ApiError(400, err.code, what + err.message, param);
      if (err instanceof LlamaError) throw new ApiError(400, 'invalid_grammar', 'invalid grammar: libllama refused it', param);
      throw err;
    }
    return grammar;
  }

  #schemaBytes(schema: unknown, param: string): void {
    const bytes = Buffer.byteLength(JSON.stringify(schema));
    if (bytes > this.#c.grammar.maxBytes) throw new ApiError(400, 'grammar_too_large', `the JSON schema is ${bytes} bytes; at most ${this.#c.grammar.maxBytes} are taken`, param);
  }

  /** The tools whose argument schemas the grammar enforces; a strict one it cannot enforce is a 400. */
  #enforceable(spec: GenerationSpec): Set<string> {
    spec.tools.tools.forEach((t, i) => this.#schemaBytes(t.parameters ?? {}, `tools[${i}].function.parameters`));
    try {
      return enforceableTools(spec.tools.tools);
    } catch (err) {
      if (err instanceof ToolSchemaError) throw new ApiError(400, 'unsupported_schema', err.message, `tools[${err.index}].function.parameters`);
      throw err;
    }
  }

  /**
   * The grammar of a turn that calls tools: tool_choice required (or a named function) allows
   * calls only; auto with a JSON response_format allows calls or the formatted answer.
   */
  #toolsGrammar(spec: GenerationSpec, m: ServedModel): string {
    const enforced = this.#enforceable(spec);
    const rf = spec.responseFormat;
    if (rf.type === 'json_schema') this.#schemaBytes(rf.schema, 'response_format.json_schema.schema');
    const answer = spec.tools.choice.mode === 'required' || rf.type === 'text' ? undefined
      : rf.type === 'json_object' ? (b: GbnfBuilder) => jsonObject(b)
        : (b: GbnfBuilder) => jsonSchemaRule(b, rf.schema, 'answer');
    return schemaGrammar(() => toolGrammar(m.toolFormat, spec.tools, enforced, answer), 'response_format.json_schema.schema');
  }

  #tokens(spec: GenerationSpec, m: ServedModel): number[] {
    const p = spec.prompt;
    if ('tokens' in p) {
      const nVocab = m.vocab.size;
      for (const t of p.tokens) if (t >= nVocab) throw new ApiError(400, 'invalid_value', `token ${t} is outside the vocabulary of ${nVocab}`, 'prompt');
      return p.tokens;
    }
    let text: string;
    if ('messages' in p) {
      try {
        text = m.vocab.applyChatTemplate(toolTurns(m.toolFormat, p.messages, spec.tools));
      } catch (err) {
        if (err instanceof LlamaError) throw new ApiError(400, 'chat_template', err.message, 'messages');
        throw err;
      }
    } else text = p.text;
    const tokens = [...m.vocab.tokenize(text, true, true)];
    if (tokens.length === 0) throw new ApiError(400, 'invalid_value', 'the prompt is empty', 'prompt');
    return tokens;
  }

  /**
   * POST /v1/responses: the request read as a chat (its stored conversation first when it
   * continues one), run, answered as a response object or its stream of events, and stored
   * (unless store is false) with the session its cells stay in: a continuation of the newest
   * response of a conversation reuses that session's KV.
   */
  async #responses(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const r = parseResponses(await readJson(req, this.#c.maxBodyBytes));
    let history: Record<string, unknown>[] = [];
    let session = '';
    if (r.previousId) {
      const prev = this.#stored.get(r.previousId, caller.tenant);
      if (!prev) throw new ApiError(400, 'previous_response_not_found', `previous response '${r.previousId}' is not stored here (store was false, it was deleted or dropped for room, or another gateway answered it)`, 'previous_response_id');
      history = prev.messages;
      if (this.#stored.isLatest(r.previousId)) session = prev.session;
    }
    const id = responseId();
    if (r.store && !session) session = id;
    const conversation = [...history, ...r.input];
    const messages = r.instructions ? [{ role: 'system', content: r.instructions }, ...conversation] : conversation;
    const spec = parseChat({ ...r.chat, model: r.model, messages, ...(session ? { session_id: session } : {}) });
    const { run, model } = this.#prepare(caller, spec);
    const createdAt = Math.floor(Date.now() / 1000);
    let seq = 0;
    const emit: EventWrite | null = r.stream ? (type, data) => sse(res, { type, sequence_number: seq++, ...data }, type) : null;
    const out = new ResponseOutput(model.toolFormat, spec.tools, emit);
    if (emit) {
      const skeleton = responseBody(id, createdAt, r.model, r.echo, null, null);
      emit('response.created', { response: skeleton });
      emit('response.in_progress', { response: skeleton });
    }
    let usage: Usage;
    try {
      usage = await run(res, out.sink);
    } catch (err) {
      if (!emit || !res.headersSent) throw err;
      // A stream that started ends with an error event (OpenAI's), not an HTTP status.
      const e = err instanceof ApiError ? err : new ApiError(500, 'internal', 'internal error');
      if (!(err instanceof ApiError)) this.#log.error('request failed', { err });
      if (!res.writableEnded) {
        emit('error', { code: e.code, message: e.message, param: e.param });
        res.end();
      }
      return;
    }
    const body = responseBody(id, createdAt, r.model, r.echo, out, usage);
    if (r.store) this.#stored.put(id, { tenant: caller.tenant, messages: [...conversation, out.assistantMessage()], body, session });
    if (!emit) return json(res, 200, body);
    emit(body.status === 'incomplete' ? 'response.incomplete' : 'response.completed', { response: body });
    res.end();
  }

  /** GET or DELETE /v1/responses/{id}: a stored response of the caller's tenant. */
  #storedResponse(method: string, res: ServerResponse, caller: Caller, id: string): void {
    const missing = () => new ApiError(404, 'not_found', `no response '${id}' is stored here`, 'response_id');
    if (method === 'DELETE') {
      if (!this.#stored.delete(id, caller.tenant)) throw missing();
      return json(res, 200, { id, object: 'response', deleted: true });
    }
    const r = this.#stored.get(id, caller.tenant);
    if (!r) throw missing();
    json(res, 200, r.body);
  }

  /** Runs a request that uses the cluster, counted as running (a stopping gateway lets it finish). */
  async #counted(run: () => Promise<void>): Promise<void> {
    if (this.#stopping) throw Object.assign(new ApiError(503, 'shutting_down', 'this gateway is stopping; retry on another'), { retryAfter: 1 });
    this.#running++;
    try {
      await run();
    } finally {
      this.#running--;
    }
  }

  /** The cluster's part of a request of model `m`: what runGeneration needs. */
  #deps(m: ServedModel, shown = m.shown): GenerationDeps {
    return { nc: this.#nc, events: this.#events, vocab: m.vocab, timeoutMs: this.#c.timeoutMs, leader: this.#leader, log: this.#log, shown };
  }

  /** Aborted when the client goes away before its answer is written. */
  #clientGone(res: ServerResponse): AbortController {
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    return abort;
  }

  /**
   * POST /v1/embeddings: each input evaluated on the cluster (at most EMBED_CONCURRENCY at once,
   * so a long list queues here instead of filling the pipelines' queues), its pooled state cut to
   * `dimensions` and written as floats or base64.
   */
  async #embeddings(req: IncomingMessage, res: ServerResponse, caller: Caller): Promise<void> {
    const r = parseEmbeddings(await readJson(req, this.#c.maxBodyBytes));
    const m = this.#model(r.model);
    if (r.dimensions !== null && r.dimensions > m.width) throw new ApiError(400, 'invalid_value', `'dimensions' is at most ${m.width}, the model's width`, 'dimensions');
    const prompts = r.inputs.map((x, i) => {
      if ('tokens' in x) {
        for (const t of x.tokens) if (t >= m.vocab.size) throw new ApiError(400, 'invalid_value', `input ${i}: token ${t} is outside the vocabulary of ${m.vocab.size}`, 'input');
        return x.tokens;
      }
      // Text is text: special-token spellings in it are not parsed as tokens.
      return [...m.vocab.tokenize(x.text, true, false)];
    });
    const spec = embeddingSpec(r.model, cacheScope(caller, ''));
    const abort = this.#clientGone(res);
    const vectors: number[][] = new Array(prompts.length);
    let next = 0, tokens = 0;
    const run = async () => {
      while (next < prompts.length && !abort.signal.aborted) {
        const i = next++;
        let got: number[] | null = null;
        const usage = await runGeneration(this.#deps(m), spec, prompts[i]!, '', { delta: () => {}, end: () => {}, embedding: (_, v) => (got = v) }, abort.signal);
        if (!got) throw new ApiError(502, 'no_embedding', `the cluster answered input ${i} without an embedding`);
        vectors[i] = got;
        tokens += usage.promptTokens;
      }
    };
    try {
      await Promise.all(Array.from({ length: Math.min(EMBED_CONCURRENCY, prompts.length) }, run));
    } catch (err) {
      abort.abort();
      throw err;
    }
    json(res, 200, {
      object: 'list', model: r.model,
      data: vectors.map((v, index) => ({ object: 'embedding', index, embedding: encodeEmbedding(shorten(v, r.dimensions), r.encoding) })),
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    });
  }

  /**
   * What every generating request checks before any compute: the caller's session and cache
   * scope, the model, the grammar and the prompt; returns what runs it.
   */
  #prepare(caller: Caller, spec: GenerationSpec): { model: ServedModel; run: (res: ServerResponse, sink: GenerationSink) => Promise<Usage> } {
    // The caller's tenant owns the session: another tenant's session of the same id is another session.
    if (spec.sessionId) spec.sessionId = sessionKey(caller.tenant, spec.sessionId);
    // Cached prompt prefixes are the tenant's (or its key's cache group's): never another's.
    spec.cacheScope = cacheScope(caller, spec.cacheSalt);
    const model = this.#model(spec.model);
    const grammar = this.#grammar(spec, model);
    const prompt = this.#tokens(spec, model);
    for (const t of spec.logitBias.keys()) {
      if (t >= model.vocab.size) throw new ApiError(400, 'invalid_value', `'logit_bias' names token ${t}, outside the vocabulary of ${model.vocab.size}`, 'logit_bias');
    }
    // Tool-call markers show as text only where tools are offered: elsewhere a special token stays unshown.
    const deps = this.#deps(model, spec.tools.choice.mode === 'none' ? NONE_SHOWN : model.shown);
    return { model, run: (res, sink) => runGeneration(deps, spec, prompt, grammar, sink, this.#clientGone(res).signal) };
  }

  async #generateOne(req: IncomingMessage, res: ServerResponse, caller: Caller, parse: (body: unknown, session?: string) => GenerationSpec): Promise<void> {
    const body = await readJson(req, this.#c.maxBodyBytes);
    const header = req.headers['x-session-id'];
    const spec = parse(body, typeof header === 'string' ? header : undefined);
    const { run, model } = this.#prepare(caller, spec);
    const meta: ResponseMeta = {
      id: `${spec.kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`,
      created: Math.floor(Date.now() / 1000), model: spec.model, fingerprint: model.fingerprint,
    };
    const answer = new Answer(spec, meta, model.toolFormat, spec.stream ? (obj) => sse(res, obj) : null);
    const usage = await run(res, answer.sink);
    if (!spec.stream) return json(res, 200, answer.body(usage));
    if (spec.includeUsage) sse(res, answer.usageChunk(usage));
    res.end('data: [DONE]\n\n');
  }

  /**
   * Stops taking requests (readyz turns 503, new ones get 503), lets the running ones finish for
   * up to drainMs, then closes what is left, drains NATS and frees the vocabulary. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#server.closeIdleConnections();
      const until = Date.now() + this.#c.drainMs;
      while (this.#running > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      if (this.#running > 0) this.#log.warn('stopping with requests still running', { running: this.#running });
      this.#server.closeAllConnections();
      await closed;
      this.#leader.stop();
      await drainNats(this.#nc, this.#log);
      for (const m of this.#models.values()) m.dispose();
      this.#log.info('gateway stopped');
    })();
    return this.#stopping;
  }
}

/**
 * Writes one server-sent event (named `event` when given), opening the stream first. No
 * Connection header of our own: Node answers keep-alive, or close (and closes after the stream)
 * when the client asked for it. The events written in one turn (the tokens of one cluster event,
 * a decode burst's) leave in one write to the socket.
 */
function sse(res: ServerResponse, data: unknown, event?: string): void {
  if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  if (res.writableCorked === 0) {
    res.cork();
    process.nextTick(() => res.uncork());
  }
  res.write(`${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`);
}

/** A grammar compiled from a JSON schema; a schema the compiler cannot enforce is a 400 naming `param`. */
function schemaGrammar(compile: () => string, param: string): string {
  try {
    return compile();
  } catch (err) {
    if (err instanceof JsonSchemaError) throw new ApiError(400, err.code, err.message, param);
    throw err;
  }
}

/** No special token shown as text. */
const NONE_SHOWN: ReadonlySet<number> = new Set();

/** Responses the gateway keeps (least recently used out first). */
const RESPONSES_KEPT = 10_000;

/** Embeddings of one request computed at once (the rest wait their turn at the gateway). */
const EMBED_CONCURRENCY = 8;

/** A model as OpenAI lists it. */
const modelObject = (id: string) => ({ id, object: 'model', created: 0, owned_by: 'strata' });

/** The methods a known path takes (null: no such path). */
function allowedMethods(path: string): string[] | null {
  if (path === '/v1/completions' || path === '/v1/chat/completions' || path === '/v1/embeddings' || path === '/v1/responses') return ['POST'];
  if (/^\/v1\/responses\/[^/]+$/.test(path)) return ['GET', 'DELETE'];
  if (['/v1/models', '/healthz', '/health', '/readyz', '/dashboard', '/admin/v1/migrations', '/admin/v1/sessions', '/admin/v1/cluster'].includes(path)) return ['GET'];
  if (/^\/v1\/models\/.+$/.test(path)) return ['GET'];
  if (/^\/admin\/v1\/sessions\/[^/]+\/migrate$/.test(path) || /^\/admin\/v1\/workers\/[^/]+\/(drain|undrain)$/.test(path)) return ['POST'];
  return null;
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Reads a JSON body of at most `limit` bytes. */
async function readJson(req: IncomingMessage, limit: number, emptyIsObject = false): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) throw new ApiError(413, 'body_too_large', `the body is ${declared} bytes; at most ${limit} are taken`);
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of req) {
    n += (chunk as Buffer).length;
    if (n > limit) throw new ApiError(413, 'body_too_large', `the body exceeds ${limit} bytes`);
    parts.push(chunk as Buffer);
  }
  const text = Buffer.concat(parts).toString('utf8');
  if (text.trim() === '') {
    if (emptyIsObject) return {};
    throw new ApiError(400, 'invalid_json', 'the body is empty; send a JSON object');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(400, 'invalid_json', `the body is not JSON: ${(err as Error).message}`);
  }
}
