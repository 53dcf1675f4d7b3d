import { useCallback, useEffect, useMemo, useReducer, useRef, useState, type DragEvent } from "react";
import {
  Background,
  Controls,
  MiniMap,
  ReactFlow,
  ReactFlowProvider,
  applyEdgeChanges,
  applyNodeChanges,
  useReactFlow,
  type Connection,
  type EdgeChange,
  type IsValidConnection,
  type NodeChange,
} from "@xyflow/react";
import { call, errorText, listFlows, loadFlow, validate, type FlowSummary, type LoadedFlow, type Revision } from "../lib/api";
import { diffFlows, type FlowChanges } from "../lib/diff";
import {
  ID_RE,
  checkWire,
  cloneSelection,
  docToGraph,
  freshId,
  graphToDoc,
  makeEdge,
  makeNode,
  nodeGeometry,
  type MwEdge,
  type MwNode,
} from "../lib/graph";
import { Live, type DeployEvent } from "../lib/live";
import { portsFor, typeMeta } from "../lib/schema";
import type { FlowDoc, FlowMeta, JSONSchema, ValidationError } from "../lib/types";
import { UndoStack } from "../lib/undo";
import { locate, publishErrors } from "../lib/validation";
import { getToken } from "../lib/api";
import { DebugPanel } from "./DebugPanel";
import { ConflictDialog, DeployDialog, HistoryDialog, ImportDialog, plainBtn, primaryBtn, type ImportReportItem } from "./Dialogs";
import { FlowIdContext, nodeTypes } from "./FlowNode";
import { DRAG_MIME, Palette } from "./Palette";
import { FlowPanel, NodePanel } from "./PropertyPanel";
import type { Initial } from "./App";

interface Snap {
  nodes: MwNode[];
  edges: MwEdge[];
  meta: FlowMeta;
}

type Dialog =
  | { kind: "deploy"; changes: FlowChanges; doc: FlowDoc }
  | { kind: "conflict"; message: string; currentRev: number | null; doc: FlowDoc; review: FlowChanges | null }
  | { kind: "history"; revisions: Revision[] | null }
  | { kind: "import"; flows: FlowDoc[]; report: ImportReportItem[]; config: string };

interface Notice {
  text: string;
  tone: "info" | "ok" | "error";
}

/** Nodes above this count open at a fixed zoom instead of fitting them all on screen (a
 *  fitted 1,000-node flow would render every node at once). */
const FIT_LIMIT = 150;

interface EditorProps {
  schemas: Record<string, JSONSchema>;
  initial: Initial;
  onLogout: () => void;
}

export function Editor(props: EditorProps) {
  return (
    <ReactFlowProvider>
      <EditorInner {...props} />
    </ReactFlowProvider>
  );
}

function EditorInner({ schemas, initial, onLogout }: EditorProps) {
  const metas = useMemo(() => new Map(Object.entries(schemas).map(([t, s]) => [t, typeMeta(t, s)])), [schemas]);
  const metaList = useMemo(() => [...metas.values()], [metas]);
  const rf = useReactFlow<MwNode, MwEdge>();

  const [nodes, setNodes] = useState<MwNode[]>([]);
  const [edges, setEdges] = useState<MwEdge[]>([]);
  const [meta, setMeta] = useState<FlowMeta>({ id: "flow1", name: "" });
  const [loaded, setLoaded] = useState<LoadedFlow | null>(null);
  const [semVersion, bump] = useReducer((x: number) => x + 1, 0);
  const [dirty, setDirty] = useState(false);
  const [flowErrors, setFlowErrors] = useState<ValidationError[]>([]);
  const [validity, setValidity] = useState<"idle" | "checking" | "ok" | "errors" | "unavailable">("idle");
  const [dialog, setDialog] = useState<Dialog | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);
  const [flows, setFlows] = useState<FlowSummary[]>([]);
  const [remote, setRemote] = useState<DeployEvent | null>(null);
  const [liveState, setLiveState] = useState("connecting");
  const [busy, setBusy] = useState(false);
  const [live, setLive] = useState<Live | null>(null);
  const [, redraw] = useReducer((x: number) => x + 1, 0);

  const undo = useRef(new UndoStack<Snap>());
  const cur = useRef<Snap>({ nodes, edges, meta });
  cur.current = { nodes, edges, meta };
  const loadedRef = useRef(loaded);
  loadedRef.current = loaded;
  const deploying = useRef(false);
  const clipboard = useRef<{ nodes: MwNode[]; edges: MwEdge[] } | null>(null);
  const wireReason = useRef<string | null>(null);

  const say = useCallback((text: string, tone: Notice["tone"] = "info") => setNotice({ text, tone }), []);

  // -- changes with undo ----------------------------------------------------------------------
  const record = useCallback((key: string | null = null) => {
    undo.current.push(cur.current, key);
    setDirty(true);
    redraw();
  }, []);

  const restore = useCallback((s: Snap) => {
    setNodes(s.nodes);
    setEdges(s.edges);
    setMeta(s.meta);
    bump();
    redraw();
  }, []);

  const doUndo = useCallback(() => {
    const s = undo.current.undo(cur.current);
    if (s) restore(s);
  }, [restore]);
  const doRedo = useCallback(() => {
    const s = undo.current.redo(cur.current);
    if (s) restore(s);
  }, [restore]);

  // -- loading --------------------------------------------------------------------------------
  const refreshFlows = useCallback(async () => {
    try {
      setFlows(await listFlows());
    } catch (e) {
      say(String(e), "error");
    }
  }, [say]);

  const showGraph = useCallback(
    (doc: FlowDoc) => {
      const g = docToGraph(doc, metas);
      const { nodes: _n, edges: _e, ...m } = doc;
      setNodes(g.nodes);
      setEdges(g.edges);
      setMeta(m);
      undo.current.clear();
      bump();
      setFitFor({ count: g.nodes.length });
    },
    [metas],
  );

  // fit the view once the new nodes are committed (React Flow then measures them)
  const [fitFor, setFitFor] = useState<{ count: number } | null>(null);
  useEffect(() => {
    if (!fitFor) return;
    // an empty canvas is not fitted: React Flow would fit the first node dropped later
    if (fitFor.count === 0) void rf.setViewport({ x: 0, y: 0, zoom: 1 });
    else if (fitFor.count <= FIT_LIMIT) void rf.fitView({ padding: 0.2, maxZoom: 1.2 });
    else void rf.setViewport({ x: 20, y: 20, zoom: 0.8 });
  }, [fitFor, rf]);

  const showLoaded = useCallback(
    (lf: LoadedFlow) => {
      setLoaded(lf);
      setRemote(null);
      setDirty(false);
      showGraph(lf.doc);
      history.replaceState(null, "", `#flow=${encodeURIComponent(lf.doc.id)}`);
      setNotice(null);
    },
    [showGraph],
  );

  const openFlow = useCallback(
    async (id: string, pending?: Promise<LoadedFlow>) => {
      try {
        showLoaded(await (pending ?? loadFlow(id)));
      } catch (e) {
        say(`cannot open ${id}: ${e instanceof Error ? e.message : String(e)}`, "error");
      }
    },
    [showLoaded, say],
  );

  const newFlow = useCallback(() => {
    const taken = new Set(flows.map((f) => f.id));
    let i = 1;
    while (taken.has(`flow${i}`)) i++;
    setLoaded(null);
    setRemote(null);
    setDirty(false);
    showGraph({ id: `flow${i}`, name: "", nodes: [], edges: [] });
    history.replaceState(null, "", "#");
  }, [flows, showGraph]);

  useEffect(() => {
    void (async () => {
      if (initial.flow) {
        const m = /flow=([^&]+)/.exec(location.hash);
        await openFlow(m ? decodeURIComponent(m[1]!) : "", initial.flow);
      }
      const fl = await initial.flows.catch(() => [] as FlowSummary[]);
      setFlows(fl);
      if (initial.flow) return;
      if (fl.length) await openFlow(fl[0]!.id);
      else showGraph({ id: "flow1", name: "", nodes: [], edges: [] });
    })();
    // once, on mount
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  // -- live events ----------------------------------------------------------------------------
  useEffect(() => {
    const l = new Live(getToken(), {
      onDeploy: (ev) => {
        void refreshFlows();
        const lf = loadedRef.current;
        if (deploying.current) return;
        if (ev.flow === cur.current.meta.id && (!lf || lf.rev !== ev.rev)) setRemote(ev);
      },
      onAuthFailed: onLogout,
      onState: setLiveState,
    });
    l.start();
    setLive(l);
    (window as unknown as { __mechaway?: unknown }).__mechaway = { live: l };
    return () => l.stop();
  }, [refreshFlows, onLogout]);

  // -- validation on every change (debounced) -------------------------------------------------
  const validSeq = useRef(0);
  useEffect(() => {
    if (semVersion === 0) return;
    const seq = ++validSeq.current;
    const t = setTimeout(async () => {
      setValidity("checking");
      const doc = graphToDoc(cur.current.meta, cur.current.nodes, cur.current.edges);
      try {
        const res = await validate(doc);
        if (seq !== validSeq.current) return;
        const where = locate(res.errors, doc);
        publishErrors(where, locate(res.warnings, doc));
        setFlowErrors(where.flow);
        setValidity(!res.available ? "unavailable" : res.ok ? "ok" : "errors");
      } catch {
        if (seq === validSeq.current) setValidity("idle");
      }
    }, 350);
    return () => clearTimeout(t);
  }, [semVersion]);

  // -- canvas callbacks -----------------------------------------------------------------------
  const onNodesChange = useCallback((changes: NodeChange<MwNode>[]) => {
    setNodes((ns) => applyNodeChanges(changes, ns));
    if (changes.some((c) => c.type === "remove")) bump();
  }, []);
  const onEdgesChange = useCallback((changes: EdgeChange<MwEdge>[]) => {
    setEdges((es) => applyEdgeChanges(changes, es));
    if (changes.some((c) => c.type === "remove")) bump();
  }, []);
  const onBeforeDelete = useCallback(async () => {
    record();
    return true;
  }, [record]);
  const onNodeDragStart = useCallback(() => record(), [record]);

  const isValidConnection = useCallback<IsValidConnection<MwEdge>>((c) => {
    const res = checkWire(cur.current.nodes, cur.current.edges, c.source, c.sourceHandle, c.target);
    if (!res.ok && res.reason !== wireReason.current) {
      wireReason.current = res.reason ?? null;
      setNotice({ text: `cannot wire: ${res.reason}`, tone: "error" });
    }
    return res.ok;
  }, []);

  const onConnect = useCallback(
    (c: Connection) => {
      const res = checkWire(cur.current.nodes, cur.current.edges, c.source, c.sourceHandle, c.target);
      if (!res.ok) {
        say(`cannot wire: ${res.reason}`, "error");
        return;
      }
      wireReason.current = null;
      record();
      setEdges((es) => [...es, makeEdge(c.source, c.sourceHandle ?? "out", c.target)]);
      bump();
    },
    [record, say],
  );

  const addNode = useCallback(
    (type: string, position?: { x: number; y: number }) => {
      record();
      const taken = new Set(cur.current.nodes.map((n) => n.id));
      const id = freshId(type, taken);
      let pos = position;
      if (!pos) {
        const box = document.querySelector(".react-flow")?.getBoundingClientRect();
        pos = rf.screenToFlowPosition({ x: (box?.left ?? 0) + (box?.width ?? 800) / 2, y: (box?.top ?? 0) + (box?.height ?? 600) / 2 });
      }
      const node = { ...makeNode(id, type, metas.get(type), {}, pos), selected: true };
      setNodes((ns) => [...ns.map((n) => (n.selected ? { ...n, selected: false } : n)), node]);
      bump();
    },
    [metas, record, rf],
  );

  const onDrop = useCallback(
    (e: DragEvent) => {
      e.preventDefault();
      const type = e.dataTransfer.getData(DRAG_MIME);
      if (!type || !metas.has(type)) return;
      addNode(type, rf.screenToFlowPosition({ x: e.clientX - 60, y: e.clientY - 20 }));
    },
    [addNode, metas, rf],
  );

  const onParams = useCallback(
    (id: string, params: Record<string, unknown>, key: string) => {
      record(`params:${id}:${key}`);
      setNodes((ns) =>
        ns.map((n) => {
          if (n.id !== id) return n;
          const ports = portsFor(metas.get(n.data.type), params);
          return { ...n, ...nodeGeometry(ports, n.data.hasInput), data: { ...n.data, params, ports } };
        }),
      );
      bump();
    },
    [metas, record],
  );

  const onName = useCallback(
    (id: string, name: string) => {
      record(`name:${id}`);
      setNodes((ns) => ns.map((n) => (n.id === id ? { ...n, data: { ...n.data, name } } : n)));
      bump();
    },
    [record],
  );

  const onRename = useCallback(
    (id: string, next: string): string | null => {
      if (!ID_RE.test(next)) return "letters, digits, _ . : - only (1-64)";
      if (cur.current.nodes.some((n) => n.id === next)) return `${next} is taken`;
      record();
      setNodes((ns) => ns.map((n) => (n.id === id ? { ...n, id: next } : n)));
      setEdges((es) =>
        es.map((e) => (e.source === id || e.target === id ? makeEdge(e.source === id ? next : e.source, e.sourceHandle ?? "out", e.target === id ? next : e.target) : e)),
      );
      bump();
      return null;
    },
    [record],
  );

  // -- keyboard: undo/redo, copy/paste (Delete is React Flow's) --------------------------------
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement | null;
      if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
      if (!(e.ctrlKey || e.metaKey)) return;
      const k = e.key.toLowerCase();
      if (k === "z" && !e.shiftKey) doUndo();
      else if ((k === "z" && e.shiftKey) || k === "y") doRedo();
      else if (k === "c") {
        const picked = cur.current.nodes.filter((n) => n.selected);
        if (!picked.length) return;
        clipboard.current = { nodes: picked, edges: cur.current.edges };
        say(`copied ${picked.length} node(s)`);
      } else if (k === "v") {
        const clip = clipboard.current;
        if (!clip) return;
        record();
        const taken = new Set(cur.current.nodes.map((n) => n.id));
        const copy = cloneSelection(clip.nodes, clip.edges, taken, { x: 40, y: 40 });
        setNodes((ns) => [...ns.map((n) => (n.selected ? { ...n, selected: false } : n)), ...copy.nodes]);
        setEdges((es) => [...es, ...copy.edges]);
        clipboard.current = { nodes: copy.nodes, edges: copy.edges };
        bump();
      } else return;
      e.preventDefault();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [doUndo, doRedo, record, say]);

  // -- deploy ---------------------------------------------------------------------------------
  const currentDoc = useCallback(() => graphToDoc(cur.current.meta, cur.current.nodes, cur.current.edges), []);

  const startDeploy = useCallback(() => {
    const doc = currentDoc();
    if (!ID_RE.test(doc.id)) {
      say(`flow id ${JSON.stringify(doc.id)}: letters, digits, _ . : - only`, "error");
      return;
    }
    setDialog({ kind: "deploy", changes: diffFlows(loadedRef.current?.doc ?? null, doc), doc });
  }, [currentDoc, say]);

  const putFlow = useCallback(
    async (doc: FlowDoc, rev: number | null) => {
      setBusy(true);
      deploying.current = true;
      try {
        const headers: Record<string, string> = rev !== null ? { "If-Match": `"${rev}"` } : {};
        const r = await call<{ rev?: number; error?: string; current_rev?: number }>("PUT", `/flows/${encodeURIComponent(doc.id)}`, doc, headers);
        if (r.status === 200 || r.status === 201) {
          const newRev = typeof r.body?.rev === "number" ? r.body.rev : null;
          setLoaded({ doc, rev: newRev, source: "api", file: undefined });
          setDirty(false);
          setRemote(null);
          setDialog(null);
          history.replaceState(null, "", `#flow=${encodeURIComponent(doc.id)}`);
          say(`deployed ${doc.id} as revision ${newRev ?? "?"}`, "ok");
          void refreshFlows();
        } else if (r.status === 409 || r.status === 412) {
          const cr = typeof r.body?.current_rev === "number" ? r.body.current_rev : null;
          setDialog({ kind: "conflict", message: errorText(r.body, r.status), currentRev: cr, doc, review: null });
        } else {
          setDialog(null);
          say(`deploy refused: ${errorText(r.body, r.status)}`, "error");
        }
      } catch (e) {
        say(`deploy failed: ${String(e)}`, "error");
      } finally {
        deploying.current = false;
        setBusy(false);
      }
    },
    [refreshFlows, say],
  );

  const reviewConflict = useCallback(async () => {
    if (dialog?.kind !== "conflict") return;
    try {
      const theirs = await loadFlow(dialog.doc.id);
      setDialog({ ...dialog, currentRev: theirs.rev ?? dialog.currentRev, review: diffFlows(theirs.doc, dialog.doc) });
    } catch (e) {
      say(String(e), "error");
    }
  }, [dialog, say]);

  const openHistory = useCallback(async () => {
    setDialog({ kind: "history", revisions: null });
    const r = await call<Revision[]>("GET", `/flows/${encodeURIComponent(cur.current.meta.id)}/revisions`);
    if (r.status === 200) setDialog({ kind: "history", revisions: r.body });
    else {
      setDialog(null);
      say(errorText(r.body, r.status), "error");
    }
  }, [say]);

  const rollback = useCallback(
    async (rev: number) => {
      const id = cur.current.meta.id;
      deploying.current = true;
      const r = await call<{ rev?: number }>("POST", `/flows/${encodeURIComponent(id)}/rollback`, { rev });
      deploying.current = false;
      if (r.status === 200 || r.status === 201) {
        setDialog(null);
        await openFlow(id);
        say(`rolled ${id} back to revision ${rev} (now revision ${r.body?.rev ?? "?"})`, "ok");
      } else {
        say(`rollback refused: ${errorText(r.body, r.status)}`, "error");
      }
    },
    [openFlow, say],
  );

  // -- Node-RED import ------------------------------------------------------------------------
  const importFile = useCallback(
    async (file: File) => {
      let data: unknown;
      try {
        data = JSON.parse(await file.text());
      } catch (e) {
        say(`${file.name} is not JSON: ${String(e)}`, "error");
        return;
      }
      const r = await call<{ flows?: FlowDoc[]; report?: ImportReportItem[]; config?: string }>("POST", "/import/nodered", data);
      if (r.status !== 200) {
        say(`import refused: ${errorText(r.body, r.status)}`, "error");
        return;
      }
      setDialog({ kind: "import", flows: r.body?.flows ?? [], report: r.body?.report ?? [], config: typeof r.body?.config === "string" ? r.body.config : "" });
    },
    [say],
  );

  const openImported = useCallback(
    async (doc: FlowDoc) => {
      setDialog(null);
      // a flow of that id already deployed: deploy against its revision
      let base: LoadedFlow | null = null;
      if (flows.some((f) => f.id === doc.id)) base = await loadFlow(doc.id).catch(() => null);
      setLoaded(base);
      setRemote(null);
      // Node-RED's nodes are small: spread its coordinates so ours (larger) do not overlap
      const spread = (ui: unknown) =>
        ui && typeof ui === "object" && typeof (ui as { x?: unknown }).x === "number" && typeof (ui as { y?: unknown }).y === "number"
          ? { ...(ui as object), x: (ui as { x: number }).x * 1.4, y: (ui as { y: number }).y * 2 }
          : ui;
      showGraph({ ...doc, nodes: doc.nodes.map((n) => (n.ui ? { ...n, ui: spread(n.ui) as typeof n.ui } : n)) });
      setDirty(true);
      say(`opened imported flow ${doc.id}: review it, then deploy`, "info");
    },
    [flows, showGraph, say],
  );

  // -- render ---------------------------------------------------------------------------------
  const selected = useMemo(() => {
    let one: MwNode | null = null;
    for (const n of nodes) {
      if (n.selected) {
        if (one) return null;
        one = n;
      }
    }
    return one;
  }, [nodes]);
  const logNodes = useMemo(() => nodes.filter((n) => n.data.type === "LogNode"), [nodes]);
  const fileInput = useRef<HTMLInputElement>(null);
  const isFile = loaded?.source === "file";

  return (
    <FlowIdContext.Provider value={meta.id}>
      <div className="flex h-full flex-col">
        <header className="flex items-center gap-2 border-b border-slate-200 bg-white px-3 py-2 text-sm">
          <span className="font-semibold">mechaway</span>
          <select
            data-testid="flow-select"
            className="rounded border border-slate-300 px-2 py-1"
            value={loaded ? meta.id : ""}
            onChange={(e) => e.target.value && void openFlow(e.target.value)}
          >
            <option value="">{loaded ? "—" : `${meta.id} (new)`}</option>
            {flows.map((f) => (
              <option key={f.id} value={f.id}>
                {f.id}
                {f.name ? ` — ${f.name}` : ""}
                {f.source === "file" ? " (file)" : ""}
              </option>
            ))}
          </select>
          <button className={plainBtn} data-testid="new-flow" onClick={newFlow}>
            New
          </button>
          {loaded && (
            <span data-testid="flow-source" className={`rounded px-2 py-0.5 text-xs ${isFile ? "bg-amber-100 text-amber-800" : "bg-slate-100 text-slate-600"}`}>
              {isFile ? `from file${loaded.file ? ` ${loaded.file}` : ""} (change it there)` : `from ${loaded.source}`} · rev {loaded.rev ?? "?"}
            </span>
          )}
          {dirty && <span className="text-xs text-amber-700" data-testid="dirty">unsaved changes</span>}
          <span className="flex-1" />
          <span data-testid="validity" className={`text-xs ${validity === "errors" ? "text-red-600" : validity === "ok" ? "text-emerald-700" : "text-slate-400"}`}>
            {validity === "ok" ? "✓ valid" : validity === "errors" ? "✗ invalid" : validity === "checking" ? "checking…" : validity === "unavailable" ? "no server validation" : ""}
          </span>
          <button className={plainBtn} onClick={doUndo} disabled={!undo.current.canUndo} data-testid="undo" title="Ctrl+Z">
            ↶
          </button>
          <button className={plainBtn} onClick={doRedo} disabled={!undo.current.canRedo} data-testid="redo" title="Ctrl+Shift+Z">
            ↷
          </button>
          <button className={plainBtn} data-testid="import-button" onClick={() => fileInput.current?.click()}>
            Import Node-RED
          </button>
          <input
            ref={fileInput}
            data-testid="import-nodered"
            type="file"
            accept=".json,application/json"
            className="hidden"
            onChange={(e) => {
              const f = e.target.files?.[0];
              e.target.value = "";
              if (f) void importFile(f);
            }}
          />
          <button className={plainBtn} data-testid="history" disabled={!loaded} onClick={() => void openHistory()}>
            History
          </button>
          <button className={primaryBtn} data-testid="deploy" onClick={startDeploy}>
            Deploy
          </button>
          <span title={`events: ${liveState}`} data-testid="live-state" className={`h-2 w-2 rounded-full ${liveState === "live" ? "bg-emerald-500" : liveState === "polling" ? "bg-amber-400" : "bg-slate-300"}`} />
          <button className="text-xs text-slate-500 hover:text-slate-800" onClick={onLogout}>
            log out
          </button>
        </header>
        {remote && (
          <div data-testid="remote-deploy" className="flex items-center gap-3 bg-amber-50 px-3 py-1 text-sm text-amber-900">
            Revision {remote.rev} of {remote.flow} was deployed elsewhere{remote.source ? ` (${remote.source})` : ""}.
            <button className="underline" onClick={() => void openFlow(remote.flow)}>
              reload
            </button>
            <button className="underline" onClick={() => setRemote(null)}>
              keep editing
            </button>
          </div>
        )}
        {notice && (
          <div data-testid="notice" className={`flex items-center justify-between px-3 py-1 text-sm ${notice.tone === "error" ? "bg-red-50 text-red-800" : notice.tone === "ok" ? "bg-emerald-50 text-emerald-800" : "bg-sky-50 text-sky-900"}`}>
            <span>{notice.text}</span>
            <button onClick={() => setNotice(null)}>✕</button>
          </div>
        )}
        <div className="flex min-h-0 flex-1">
          <Palette metas={metaList} onAdd={addNode} />
          <main className="relative min-w-0 flex-1" onDragOver={(e) => e.preventDefault()} onDrop={onDrop} data-testid="canvas">
            <ReactFlow<MwNode, MwEdge>
              nodes={nodes}
              edges={edges}
              nodeTypes={nodeTypes}
              onNodesChange={onNodesChange}
              onEdgesChange={onEdgesChange}
              onConnect={onConnect}
              onBeforeDelete={onBeforeDelete}
              onNodeDragStart={onNodeDragStart}
              isValidConnection={isValidConnection}
              onlyRenderVisibleElements
              deleteKeyCode={["Delete", "Backspace"]}
              minZoom={0.1}
              maxZoom={2}
              proOptions={{ hideAttribution: true }}
            >
              <Background gap={20} />
              <Controls />
              {nodes.length <= FIT_LIMIT && <MiniMap pannable zoomable />}
            </ReactFlow>
          </main>
          <aside className="w-80 shrink-0 overflow-y-auto border-l border-slate-200 bg-white">
            {selected ? (
              <NodePanel key={selected.id} node={selected} meta={metas.get(selected.data.type)} onParams={onParams} onRename={onRename} onName={onName} />
            ) : (
              <FlowPanel
                id={meta.id}
                name={meta.name ?? ""}
                isNew={!loaded}
                source={loaded?.source ?? null}
                file={loaded?.file}
                errors={flowErrors}
                count={nodes.length}
                onId={(id) => {
                  record("flow-id");
                  setMeta((m) => ({ ...m, id }));
                  bump();
                }}
                onName={(name) => {
                  record("flow-name");
                  setMeta((m) => ({ ...m, name }));
                  bump();
                }}
              />
            )}
          </aside>
        </div>
        <DebugPanel live={live} flowId={meta.id} logNodes={logNodes} />
      </div>
      {dialog?.kind === "deploy" && (
        <DeployDialog changes={dialog.changes} rev={loaded?.rev ?? null} flowId={dialog.doc.id} busy={busy} onClose={() => setDialog(null)} onConfirm={() => void putFlow(dialog.doc, loaded?.rev ?? null)} />
      )}
      {dialog?.kind === "conflict" && (
        <ConflictDialog
          message={dialog.message}
          currentRev={dialog.currentRev}
          review={dialog.review}
          onReview={() => void reviewConflict()}
          onOverwrite={() => void putFlow(dialog.doc, dialog.currentRev)}
          onReload={() => {
            setDialog(null);
            void openFlow(dialog.doc.id);
          }}
          onClose={() => setDialog(null)}
        />
      )}
      {dialog?.kind === "history" && <HistoryDialog revisions={dialog.revisions} onRollback={(rev) => void rollback(rev)} onClose={() => setDialog(null)} />}
      {dialog?.kind === "import" && <ImportDialog flows={dialog.flows} report={dialog.report} config={dialog.config} onOpen={(d) => void openImported(d)} onClose={() => setDialog(null)} />}
    </FlowIdContext.Provider>
  );
}
