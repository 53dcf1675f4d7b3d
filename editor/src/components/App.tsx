import { useCallback, useEffect, useState } from "react";
import { call, errorText, getToken, listFlows, loadFlow, setToken, type FlowSummary, type LoadedFlow } from "../lib/api";
import type { JSONSchema } from "../lib/types";
import { Editor } from "./Editor";

export interface Initial {
  flows: Promise<FlowSummary[]>;
  /** the flow named in the URL (``#flow=ID``), fetched while the schemas load */
  flow: Promise<LoadedFlow> | null;
}

type Phase = { kind: "checking" } | { kind: "login"; error?: string } | { kind: "ready"; schemas: Record<string, JSONSchema>; initial: Initial };

function hashFlow(): string | null {
  const m = /flow=([^&]+)/.exec(location.hash);
  return m ? decodeURIComponent(m[1]!) : null;
}

/** Log in (token kept in sessionStorage for this tab only), then the editor. */
export function App() {
  const [phase, setPhase] = useState<Phase>({ kind: "checking" });

  const enter = useCallback(async (token: string | null) => {
    // the schemas prove the token (a daemon without one answers anyway); the flow list
    // and the flow in the URL are fetched at the same time
    setToken(token);
    const want = hashFlow();
    const initial: Initial = { flows: listFlows(), flow: want ? loadFlow(want) : null };
    initial.flows.catch(() => undefined);
    initial.flow?.catch(() => undefined);
    const r = await call<Record<string, JSONSchema>>("GET", "/schema", undefined, {}, token);
    if (r.status === 401) {
      setToken(null);
      setPhase({ kind: "login", error: token ? "wrong token" : undefined });
      return;
    }
    if (r.status !== 200) {
      setToken(null);
      setPhase({ kind: "login", error: errorText(r.body, r.status) });
      return;
    }
    setPhase({ kind: "ready", schemas: r.body, initial });
  }, []);

  useEffect(() => {
    void enter(getToken());
  }, [enter]);

  const logout = useCallback(() => {
    setToken(null);
    setPhase({ kind: "login" });
  }, []);

  if (phase.kind === "checking") return <div className="p-6 text-slate-500">Connecting…</div>;
  if (phase.kind === "login") return <Login error={phase.error} onSubmit={(t) => void enter(t)} />;
  return <Editor schemas={phase.schemas} initial={phase.initial} onLogout={logout} />;
}

function Login({ error, onSubmit }: { error?: string; onSubmit: (token: string) => void }) {
  const [value, setValue] = useState("");
  return (
    <div className="flex h-full items-center justify-center">
      <form
        className="w-96 rounded-lg border border-slate-200 bg-white p-6 shadow"
        onSubmit={(e) => {
          e.preventDefault();
          onSubmit(value.trim());
        }}
      >
        <h1 className="mb-1 text-lg font-semibold">mechaway editor</h1>
        <p className="mb-4 text-sm text-slate-500">
          The daemon's API token (<code>[api] token</code> in mechaway.toml). It is kept for this tab only.
        </p>
        <input
          data-testid="token"
          type="password"
          autoFocus
          autoComplete="current-password"
          className="mb-3 w-full rounded border border-slate-300 px-3 py-2"
          placeholder="API token"
          value={value}
          onChange={(e) => setValue(e.target.value)}
        />
        {error && <p className="mb-3 text-sm text-red-600" data-testid="login-error">{error}</p>}
        <button data-testid="login" className="w-full rounded bg-sky-600 py-2 text-white hover:bg-sky-700" type="submit">
          Log in
        </button>
      </form>
    </div>
  );
}
