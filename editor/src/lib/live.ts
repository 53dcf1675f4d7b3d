/** The events WebSocket (counters, deploys, debug), with a /status poll when it is missing. */
import { call } from "./api";
import { applyCounters, counters } from "./counters";
import type { Counters } from "./types";

export interface DebugEntry {
  seq: number;
  flow: string;
  node: string;
  ts: number;
  value: unknown;
}

export interface DeployEvent {
  flow: string;
  rev: number;
  source?: string;
}

type Listener = () => void;

/** The debug messages: a ring with a cap, readers notified at most every 100 ms. */
export class DebugLog {
  entries: DebugEntry[] = [];
  version = 0;
  paused = false;
  private seq = 0;
  private listeners = new Set<Listener>();
  private timer: ReturnType<typeof setTimeout> | null = null;

  constructor(public cap = 500) {}

  add(e: Omit<DebugEntry, "seq">): void {
    if (this.paused) return;
    this.entries.push({ ...e, seq: ++this.seq });
    if (this.entries.length > this.cap) this.entries.splice(0, this.entries.length - this.cap);
    this.schedule();
  }

  setCap(cap: number): void {
    this.cap = cap;
    if (this.entries.length > cap) this.entries.splice(0, this.entries.length - cap);
    this.schedule();
  }

  clear(): void {
    this.entries = [];
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.version++;
      this.listeners.forEach((fn) => fn());
    }, 100);
  }

  subscribe = (fn: Listener): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  getVersion = (): number => this.version;
}

export const debugLog = new DebugLog();

export interface LiveHandlers {
  onDeploy(e: DeployEvent): void;
  onAuthFailed(): void;
  onState(state: "connecting" | "live" | "polling" | "closed"): void;
}

export class Live {
  private ws: WebSocket | null = null;
  private closed = false;
  private failures = 0;
  private everOpen = false;
  private pollTimer: ReturnType<typeof setInterval> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private debugPaused = false;
  private debugFilter: string[] | null = null;
  /** messages received, by type (the benchmark reads it) */
  readonly received: Record<string, number> = {};

  constructor(
    private readonly token: string | null,
    private readonly handlers: LiveHandlers,
  ) {}

  start(): void {
    this.closed = false;
    this.connect();
  }

  stop(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.ws?.close();
    this.ws = null;
  }

  setDebugPaused(paused: boolean): void {
    this.debugPaused = paused;
    this.send({ type: "debug", paused });
  }

  setDebugFilter(nodes: string[] | null): void {
    this.debugFilter = nodes;
    this.send({ type: "debug_filter", nodes });
  }

  private send(msg: unknown): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  private connect(): void {
    if (this.closed) return;
    this.handlers.onState("connecting");
    const url = new URL("api/v1/events", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token: this.token ?? "" }));
      if (this.debugPaused) this.send({ type: "debug", paused: true });
      if (this.debugFilter) this.send({ type: "debug_filter", nodes: this.debugFilter });
    };
    ws.onmessage = (ev) => {
      if (!this.everOpen) {
        this.everOpen = true;
        this.stopPolling();
        this.handlers.onState("live");
      }
      this.failures = 0;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(String(ev.data)) as Record<string, unknown>;
      } catch {
        return;
      }
      this.dispatch(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.everOpen = false;
      if (ev.code === 4401) {
        this.handlers.onAuthFailed();
        return;
      }
      if (this.closed) return;
      this.failures++;
      // no events endpoint (an older daemon) or a long outage: poll /status meanwhile
      if (this.failures >= 2) this.startPolling();
      const wait = Math.min(10_000, 500 * 2 ** Math.min(this.failures, 5));
      this.retryTimer = setTimeout(() => this.connect(), wait);
    };
  }

  dispatch(msg: Record<string, unknown>): void {
    const type = String(msg["type"]);
    this.received[type] = (this.received[type] ?? 0) + 1;
    switch (type) {
      case "counters":
        applyCounters(counters, (msg["flows"] ?? {}) as Record<string, Record<string, Partial<Counters>>>);
        break;
      case "deploy":
        this.handlers.onDeploy({ flow: String(msg["flow"]), rev: Number(msg["rev"]), source: msg["source"] as string | undefined });
        break;
      case "debug":
        debugLog.add({ flow: String(msg["flow"]), node: String(msg["node"]), ts: Number(msg["ts"]) || Date.now() / 1000, value: msg["value"] });
        break;
      default:
        break;
    }
  }

  private startPolling(): void {
    if (this.pollTimer || this.closed) return;
    this.handlers.onState("polling");
    const poll = async () => {
      const r = await call<{ flows?: Record<string, { nodes?: Record<string, Partial<Counters>> }> }>("GET", "/status");
      if (r.status === 401) this.handlers.onAuthFailed();
      if (r.status !== 200 || !r.body?.flows) return;
      const flows: Record<string, Record<string, Partial<Counters>>> = {};
      for (const [fid, f] of Object.entries(r.body.flows)) flows[fid] = f?.nodes ?? {};
      applyCounters(counters, flows);
    };
    void poll();
    this.pollTimer = setInterval(() => void poll(), 1000);
  }

  private stopPolling(): void {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }
}
