/** CodeMirror 6 for Lua scripts, loaded only when a node with a script is opened. */
import { useEffect, useRef } from "react";
import { EditorState } from "@codemirror/state";
import { EditorView, keymap, lineNumbers, highlightActiveLine, drawSelection } from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { StreamLanguage, syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput } from "@codemirror/language";
import { lua } from "@codemirror/legacy-modes/mode/lua";
import { lintGutter, setDiagnostics } from "@codemirror/lint";

interface Props {
  value: string;
  onChange: (v: string) => void;
  /** 1-based line of the server's error, if any */
  errorLine?: number;
  errorMessage?: string;
}

export default function LuaEditor({ value, onChange, errorLine, errorMessage }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const onChangeRef = useRef(onChange);
  onChangeRef.current = onChange;

  useEffect(() => {
    const v = new EditorView({
      parent: host.current!,
      state: EditorState.create({
        doc: value,
        extensions: [
          lineNumbers(),
          history(),
          drawSelection(),
          highlightActiveLine(),
          bracketMatching(),
          indentOnInput(),
          StreamLanguage.define(lua),
          syntaxHighlighting(defaultHighlightStyle),
          lintGutter(),
          keymap.of([...defaultKeymap, ...historyKeymap, indentWithTab]),
          EditorView.updateListener.of((u) => {
            if (u.docChanged) onChangeRef.current(u.state.doc.toString());
          }),
          EditorView.theme({ "&": { fontSize: "12px", maxHeight: "320px" }, ".cm-scroller": { overflow: "auto" } }),
        ],
      }),
    });
    view.current = v;
    return () => {
      v.destroy();
      view.current = null;
    };
    // the editor is created once; outside changes (undo) arrive through the effect below
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  useEffect(() => {
    const v = view.current;
    if (v && v.state.doc.toString() !== value) {
      v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: value } });
    }
  }, [value]);

  useEffect(() => {
    const v = view.current;
    if (!v) return;
    const diags = [];
    if (errorLine !== undefined && errorLine >= 1 && errorLine <= v.state.doc.lines) {
      const line = v.state.doc.line(errorLine);
      diags.push({ from: line.from, to: Math.max(line.from, line.to), severity: "error" as const, message: errorMessage ?? "error" });
    }
    v.dispatch(setDiagnostics(v.state, diags));
  }, [errorLine, errorMessage, value]);

  return (
    <div className="rounded border border-slate-300 bg-white">
      <div ref={host} data-testid="lua-editor" />
      {errorLine !== undefined && (
        <p className="border-t border-red-200 bg-red-50 px-2 py-0.5 text-[11px] text-red-700" data-testid="lua-error">
          line {errorLine}: {errorMessage}
        </p>
      )}
    </div>
  );
}
