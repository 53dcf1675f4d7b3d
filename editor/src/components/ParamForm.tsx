import { lazy, Suspense, useState } from "react";
import { boundsProblem, emptyValue, type Field } from "../lib/schema";
import type { ValidationError } from "../lib/types";
import { shortMessage } from "../lib/validation";

const LuaEditor = lazy(() => import("./LuaEditor"));

type Path = (string | number)[];

export interface FormProps {
  fields: Field[];
  value: Record<string, unknown>;
  errors: ValidationError[];
  onChange: (path: Path, value: unknown) => void;
}

/** The params form of one node, generated from its type's JSON Schema. */
export function ParamForm({ fields, value, errors, onChange }: FormProps) {
  return (
    <div className="space-y-3">
      {fields.map((f) => (
        <FieldRow
          key={f.name}
          field={f}
          path={[f.name]}
          value={value[f.name]}
          errors={errors.filter((e) => e.param === f.name)}
          onChange={onChange}
        />
      ))}
    </div>
  );
}

function testId(path: Path): string {
  return `param-${path.join(".")}`;
}

function defaultText(f: Field): string {
  if (!f.hasDefault) return f.required ? "required" : "";
  return `default: ${JSON.stringify(f.default)}`;
}

function FieldRow({ field, path, value, errors, onChange }: { field: Field; path: Path; value: unknown; errors: ValidationError[]; onChange: FormProps["onChange"] }) {
  return (
    <div className="text-sm">
      <label className="mb-0.5 flex items-baseline justify-between gap-2">
        <span className="font-medium text-slate-700">
          {field.title}
          {field.required && !field.hasDefault && <span className="text-red-600"> *</span>}
        </span>
        <span className="truncate text-[10px] text-slate-400">{defaultText(field)}</span>
      </label>
      <FieldInput field={field} path={path} value={value} errors={errors} onChange={onChange} />
      {field.description && <p className="mt-0.5 text-[11px] leading-snug text-slate-500">{field.description.replace(/``/g, "")}</p>}
      {errors.map((e, i) => (
        <p key={i} className="mt-0.5 text-[11px] text-red-600" data-testid="param-error">
          {e.line ? `line ${e.line}: ` : ""}
          {shortMessage(e)}
        </p>
      ))}
    </div>
  );
}

const inputCls = "w-full rounded border border-slate-300 px-2 py-1 text-sm focus:border-sky-500 focus:outline-none";

function FieldInput({ field, path, value, errors, onChange }: { field: Field; path: Path; value: unknown; errors: ValidationError[]; onChange: FormProps["onChange"] }) {
  const id = testId(path);
  const unset = () => onChange(path, field.required && !field.hasDefault ? (field.nullable ? null : undefined) : undefined);
  switch (field.kind) {
    case "string":
      return field.multiline ? (
        <textarea data-testid={id} className={inputCls} rows={3} value={typeof value === "string" ? value : ""} placeholder={field.hasDefault && field.default !== null ? String(field.default) : ""} onChange={(e) => (e.target.value === "" && !field.required ? unset() : onChange(path, e.target.value))} />
      ) : (
        <input data-testid={id} className={inputCls} value={typeof value === "string" ? value : ""} placeholder={field.hasDefault && field.default !== null ? String(field.default) : ""} onChange={(e) => (e.target.value === "" && !field.required ? unset() : onChange(path, e.target.value))} />
      );
    case "code": {
      const err = errors.find((e) => e.line !== undefined) ?? errors[0];
      return (
        <div data-testid={id}>
          <Suspense fallback={<textarea className={inputCls} rows={8} readOnly value={typeof value === "string" ? value : ""} />}>
            <LuaEditor value={typeof value === "string" ? value : ""} onChange={(v) => onChange(path, v)} errorLine={err?.line} errorMessage={err ? shortMessage(err) : undefined} />
          </Suspense>
        </div>
      );
    }
    case "number":
    case "integer":
      return <NumberInput field={field} id={id} value={value} onCommit={(v) => (v === undefined ? unset() : onChange(path, v))} />;
    case "boolean":
      return (
        <input
          data-testid={id}
          type="checkbox"
          className="h-4 w-4"
          checked={typeof value === "boolean" ? value : field.default === true}
          onChange={(e) => onChange(path, e.target.checked)}
        />
      );
    case "enum": {
      const idx = field.options.findIndex((o) => o === value);
      return (
        <select data-testid={id} className={inputCls} value={idx < 0 ? "" : String(idx)} onChange={(e) => (e.target.value === "" ? unset() : onChange(path, field.options[Number(e.target.value)]))}>
          <option value="">{field.hasDefault ? `(default: ${String(field.default)})` : "— choose —"}</option>
          {field.options.map((o, i) => (
            <option key={String(o)} value={String(i)}>
              {String(o)}
            </option>
          ))}
        </select>
      );
    }
    case "object": {
      const obj = value && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
      return (
        <div data-testid={id} className="space-y-2 rounded border border-slate-200 bg-slate-50 p-2">
          {field.fields.map((sub) => (
            <FieldRow key={sub.name} field={sub} path={[...path, sub.name]} value={obj[sub.name]} errors={[]} onChange={onChange} />
          ))}
        </div>
      );
    }
    case "array": {
      const arr = Array.isArray(value) ? value : [];
      return (
        <div data-testid={id} className="space-y-2">
          {arr.map((item, i) => (
            <div key={i} className="relative rounded border border-slate-200 bg-slate-50 p-2 pr-7">
              <button
                type="button"
                data-testid={`${id}.${i}.remove`}
                title="Remove"
                className="absolute top-1 right-1 text-slate-400 hover:text-red-600"
                onClick={() => onChange(path, arr.filter((_, j) => j !== i))}
              >
                ✕
              </button>
              {field.item.kind === "object" ? (
                <FieldInput field={field.item} path={[...path, i]} value={item} errors={[]} onChange={onChange} />
              ) : (
                <FieldInput field={field.item} path={[...path, i]} value={item} errors={[]} onChange={onChange} />
              )}
            </div>
          ))}
          <button type="button" data-testid={`${id}.add`} className="rounded border border-dashed border-slate-400 px-2 py-0.5 text-xs text-slate-600 hover:border-sky-500" onClick={() => onChange(path, [...arr, emptyValue(field.item)])}>
            + add {field.item.kind === "object" ? "item" : field.item.kind}
          </button>
        </div>
      );
    }
    case "json":
      return <JsonInput field={field} id={id} value={value} onCommit={(v) => (v === undefined ? unset() : onChange(path, v))} />;
  }
}

function NumberInput({ field, id, value, onCommit }: { field: Field; id: string; value: unknown; onCommit: (v: number | undefined) => void }) {
  const [draft, setDraft] = useState<string | null>(null);
  const shown = draft ?? (typeof value === "number" ? String(value) : "");
  const parsed = Number(shown);
  const problem = shown !== "" && Number.isFinite(parsed) ? boundsProblem(field, parsed) : shown !== "" ? "not a number" : null;
  const f = field.kind === "number" || field.kind === "integer" ? field : null;
  return (
    <>
      <input
        data-testid={id}
        type="number"
        className={`${inputCls} ${problem ? "border-red-500" : ""}`}
        value={shown}
        min={f?.minimum ?? f?.exclusiveMinimum}
        max={f?.maximum ?? f?.exclusiveMaximum}
        step={field.kind === "integer" ? 1 : "any"}
        placeholder={field.hasDefault && field.default !== null ? String(field.default) : ""}
        onChange={(e) => {
          const t = e.target.value;
          setDraft(t);
          if (t === "") onCommit(undefined);
          else if (Number.isFinite(Number(t))) onCommit(Number(t));
        }}
        onBlur={() => setDraft(null)}
      />
      {problem && <p className="text-[11px] text-red-600">{problem}</p>}
    </>
  );
}

function JsonInput({ field, id, value, onCommit }: { field: Field; id: string; value: unknown; onCommit: (v: unknown) => void }) {
  const loose = field.kind === "json" && field.loose;
  const [draft, setDraft] = useState<string | null>(null);
  const text = draft ?? (value === undefined ? "" : loose && typeof value === "string" ? value : JSON.stringify(value, null, loose ? undefined : 2));
  let bad = false;
  if (!loose && text !== "") {
    try {
      JSON.parse(text);
    } catch {
      bad = true;
    }
  }
  const commit = (t: string) => {
    if (t === "") return onCommit(undefined);
    try {
      onCommit(JSON.parse(t));
    } catch {
      // plain text in an "any value" field is a string; elsewhere wait for valid JSON
      if (loose) onCommit(t);
    }
  };
  const props = {
    "data-testid": id,
    className: `${inputCls} font-mono ${bad ? "border-red-500" : ""}`,
    value: text,
    placeholder: loose ? "JSON value or text" : "JSON",
    onChange: (e: { target: { value: string } }) => {
      setDraft(e.target.value);
      commit(e.target.value);
    },
    onBlur: () => setDraft(null),
  };
  return loose ? <input {...props} /> : <textarea rows={3} {...props} />;
}
