/** The daemon's admin API, same origin, with the tab's bearer token. */
import type { FlowDoc, JSONSchema, ValidationError } from "./types";

const TOKEN_KEY = "mechaway.token";

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, token);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly body: unknown,
  ) {
    super(message);
  }
}

export interface ApiResponse<T> {
  status: number;
  body: T;
  headers: Headers;
}

/** One call; the token from sessionStorage unless given. Never throws on HTTP errors. */
export async function call<T = unknown>(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  token: string | null = getToken(),
): Promise<ApiResponse<T>> {
  const h: Record<string, string> = { Accept: "application/json", ...headers };
  if (token) h["Authorization"] = `Bearer ${token}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const resp = await fetch(`api/v1${path}`, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data: unknown = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text.slice(0, 500) };
    }
  }
  return { status: resp.status, body: data as T, headers: resp.headers };
}

/** The message of an error body: ``{"error": ..., "issues": [...]}``. */
export function errorText(body: unknown, status: number): string {
  if (body && typeof body === "object") {
    const b = body as { error?: unknown; message?: unknown; issues?: unknown; errors?: unknown };
    const head = typeof b.error === "string" ? b.error : typeof b.message === "string" ? b.message : `HTTP ${status}`;
    const list = Array.isArray(b.issues) ? b.issues : Array.isArray(b.errors) ? b.errors : [];
    const detail = list
      .slice(0, 5)
      .map((i: { where?: string; message?: string }) => (i.where ? `${i.where}: ${i.message}` : String(i.message)))
      .join("; ");
    return detail ? `${head}: ${detail}` : head;
  }
  return `HTTP ${status}`;
}

export interface FlowSummary {
  id: string;
  name: string;
  rev: number;
  source: string;
  running: boolean;
  disabled: boolean;
  file?: string;
}

export interface LoadedFlow {
  doc: FlowDoc;
  rev: number | null;
  source: string;
  file?: string;
}

/** ``GET /flows/{id}``: ``{"rev","source","file"?,"flow":{...}}`` (or the document with
 *  ``rev``/``source`` beside its keys); the ETag wins for the revision. */
export function parseFlowResponse(body: unknown, etag: string | null): LoadedFlow {
  const b = (body ?? {}) as Record<string, unknown>;
  const rawDoc = (b["flow"] && typeof b["flow"] === "object" ? b["flow"] : b) as Record<string, unknown>;
  const { rev: _r, source: _s, file: _f, ...doc } = rawDoc;
  const tagRev = etag ? Number(etag.replace(/^W\//, "").replace(/"/g, "")) : NaN;
  const rev = Number.isInteger(tagRev) ? tagRev : typeof b["rev"] === "number" ? (b["rev"] as number) : null;
  return {
    doc: doc as unknown as FlowDoc,
    rev,
    source: typeof b["source"] === "string" ? (b["source"] as string) : "api",
    file: typeof b["file"] === "string" ? (b["file"] as string) : undefined,
  };
}

export async function loadFlow(id: string): Promise<LoadedFlow> {
  const r = await call(`GET`, `/flows/${encodeURIComponent(id)}`);
  if (r.status !== 200) throw new ApiError(r.status, errorText(r.body, r.status), r.body);
  return parseFlowResponse(r.body, r.headers.get("ETag"));
}

export async function listFlows(): Promise<FlowSummary[]> {
  const r = await call<FlowSummary[]>("GET", "/flows");
  if (r.status !== 200) throw new ApiError(r.status, errorText(r.body, r.status), r.body);
  return r.body;
}

export async function loadSchemas(): Promise<Record<string, JSONSchema>> {
  const r = await call<Record<string, JSONSchema>>("GET", "/schema");
  if (r.status !== 200) throw new ApiError(r.status, errorText(r.body, r.status), r.body);
  return r.body;
}

export interface ValidateResult {
  ok: boolean;
  errors: ValidationError[];
  /** what deploys but may not be meant (an unwired input, a disabled node) */
  warnings: ValidationError[];
  /** false when the daemon has no validate endpoint */
  available: boolean;
}

export async function validate(doc: FlowDoc): Promise<ValidateResult> {
  const r = await call<{ ok?: boolean; errors?: ValidationError[]; issues?: ValidationError[]; warnings?: ValidationError[] }>("POST", "/validate", doc);
  if (r.status === 404 || r.status === 405) return { ok: true, errors: [], warnings: [], available: false };
  const warnings = Array.isArray(r.body?.warnings) ? r.body.warnings : [];
  if (r.status === 200) return { ok: true, errors: [], warnings, available: true };
  const errs = r.body?.errors ?? r.body?.issues ?? [];
  if (!errs.length) {
    return { ok: false, errors: [{ where: "", message: errorText(r.body, r.status) }], warnings, available: true };
  }
  return { ok: false, errors: errs, warnings, available: true };
}

export interface Revision {
  rev: number;
  source: string;
  created_at: number | string;
  active: boolean;
}
