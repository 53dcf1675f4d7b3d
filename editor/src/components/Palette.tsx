import { memo, useMemo, useState } from "react";
import { GROUP_ORDER } from "../lib/schema";
import type { TypeMeta } from "../lib/types";

export const DRAG_MIME = "application/x-mechaway-type";

const GROUP_TITLE: Record<string, string> = {
  sources: "Sources",
  logic: "Logic",
  storage: "Storage",
  sinks: "Sinks",
  hardware: "Hardware",
};

function PaletteView({ metas, onAdd }: { metas: TypeMeta[]; onAdd: (type: string) => void }) {
  const [filter, setFilter] = useState("");
  const groups = useMemo(() => {
    const f = filter.toLowerCase();
    return GROUP_ORDER.map((g) => ({
      group: g,
      items: metas.filter((m) => m.group === g && (!f || m.type.toLowerCase().includes(f))).sort((a, b) => a.type.localeCompare(b.type)),
    })).filter((g) => g.items.length > 0);
  }, [metas, filter]);
  return (
    <aside className="flex w-52 shrink-0 flex-col overflow-y-auto border-r border-slate-200 bg-white" data-testid="palette">
      <input
        className="m-2 rounded border border-slate-300 px-2 py-1 text-sm"
        placeholder="Filter node types"
        value={filter}
        onChange={(e) => setFilter(e.target.value)}
      />
      {groups.map(({ group, items }) => (
        <section key={group} className="mb-2">
          <h3 className="px-3 py-1 text-[11px] font-semibold tracking-wide text-slate-500 uppercase">{GROUP_TITLE[group]}</h3>
          {items.map((m) => (
            <div
              key={m.type}
              data-testid={`palette-${m.type}`}
              draggable
              title={m.description}
              onDragStart={(e) => {
                e.dataTransfer.setData(DRAG_MIME, m.type);
                e.dataTransfer.effectAllowed = "move";
              }}
              onDoubleClick={() => onAdd(m.type)}
              className="mx-2 mb-1 cursor-grab rounded border border-slate-200 bg-slate-50 px-2 py-1 text-sm hover:border-sky-400 hover:bg-sky-50"
            >
              {m.type.replace(/Node$/, "")}
              <span className="block truncate text-[10px] text-slate-500">{m.description}</span>
            </div>
          ))}
        </section>
      ))}
    </aside>
  );
}

export const Palette = memo(PaletteView);
