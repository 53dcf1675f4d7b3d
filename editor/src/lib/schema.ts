/** Node type JSON Schemas -> palette metadata and form field descriptors. */
import type { Group, JSONSchema, Kind, TypeMeta } from "./types";

interface FieldBase {
  name: string;
  /** path from the params root: ``["rules", 0, "op"]`` */
  title: string;
  description?: string;
  required: boolean;
  nullable: boolean;
  hasDefault: boolean;
  default?: unknown;
}

export type Field =
  | (FieldBase & { kind: "string"; multiline: boolean })
  | (FieldBase & { kind: "code"; language: "lua" })
  | (FieldBase & {
      kind: "number" | "integer";
      minimum?: number;
      maximum?: number;
      exclusiveMinimum?: number;
      exclusiveMaximum?: number;
    })
  | (FieldBase & { kind: "boolean" })
  | (FieldBase & { kind: "enum"; options: (string | number | boolean)[] })
  | (FieldBase & { kind: "object"; fields: Field[] })
  | (FieldBase & { kind: "array"; item: Field })
  /** any JSON value; ``loose``: text that is not JSON is kept as a string */
  | (FieldBase & { kind: "json"; loose: boolean });

const isObj = (v: unknown): v is JSONSchema =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** Follow ``$ref: "#/$defs/X"`` (and ``#/definitions/X``) against the root schema. */
export function resolve(s: JSONSchema, root: JSONSchema, depth = 0): JSONSchema {
  const ref = s["$ref"];
  if (typeof ref !== "string" || depth > 20) return s;
  const m = /^#\/(\$defs|definitions)\/(.+)$/.exec(ref);
  const defs = m ? root[m[1]!] : undefined;
  const target = m && isObj(defs) ? defs[m[2]!] : undefined;
  if (!isObj(target)) return s;
  const { $ref: _ignored, ...rest } = s;
  // sibling keys (description, default) win over the referenced definition's
  return { ...resolve(target, root, depth + 1), ...rest };
}

/** The params object schema of a node type (the root is usually a ``$ref``). */
export function paramsSchema(root: JSONSchema): JSONSchema {
  return resolve(root, root);
}

function isNullSchema(s: unknown): boolean {
  return isObj(s) && s["type"] === "null";
}

function humanize(name: string): string {
  return name.replace(/_/g, " ");
}

/** One property schema -> a field descriptor. */
export function toField(
  name: string,
  raw: JSONSchema,
  root: JSONSchema,
  required: boolean,
  depth = 0,
): Field {
  let s = resolve(raw, root);
  let nullable = false;
  const hasDefault = "default" in raw || "default" in s;
  const dflt = "default" in raw ? raw["default"] : s["default"];
  const description =
    (typeof raw["description"] === "string" ? raw["description"] : undefined) ??
    (typeof s["description"] === "string" ? (s["description"] as string) : undefined);
  const title = typeof raw["title"] === "string" ? (raw["title"] as string) : humanize(name);

  const union = (s["anyOf"] ?? s["oneOf"]) as unknown;
  if (Array.isArray(union)) {
    const rest = union.filter((u) => !isNullSchema(u));
    nullable = rest.length < union.length;
    if (rest.length === 1 && isObj(rest[0])) {
      const { anyOf: _a, oneOf: _o, ...outer } = s;
      s = { ...resolve(rest[0], root), ...outer };
    } else {
      return { kind: "json", loose: false, name, title, description, required, nullable, hasDefault, default: dflt };
    }
  }
  let type = s["type"];
  if (Array.isArray(type)) {
    const rest = type.filter((t) => t !== "null");
    nullable = nullable || rest.length < type.length;
    type = rest.length === 1 ? rest[0] : undefined;
  }
  const base: FieldBase = { name, title, description, required, nullable, hasDefault, default: dflt };

  if (Array.isArray(s["enum"])) {
    return { ...base, kind: "enum", options: s["enum"] as (string | number | boolean)[] };
  }
  if ("const" in s) {
    return { ...base, kind: "enum", options: [s["const"] as string] };
  }
  const num = (k: string): number | undefined =>
    typeof s[k] === "number" ? (s[k] as number) : undefined;
  switch (type) {
    case "string": {
      const fmt = s["format"] ?? s["x-format"] ?? s["contentMediaType"];
      if (name === "script" || fmt === "lua" || fmt === "text/x-lua") {
        return { ...base, kind: "code", language: "lua" };
      }
      const maxLen = num("maxLength");
      return { ...base, kind: "string", multiline: maxLen === undefined && /template|text|body/.test(name) };
    }
    case "number":
    case "integer":
      return {
        ...base,
        kind: type,
        minimum: num("minimum"),
        maximum: num("maximum"),
        exclusiveMinimum: num("exclusiveMinimum"),
        exclusiveMaximum: num("exclusiveMaximum"),
      };
    case "boolean":
      return { ...base, kind: "boolean" };
    case "array": {
      const items = s["items"];
      if (isObj(items) && depth < 6) {
        return { ...base, kind: "array", item: toField("item", items, root, true, depth + 1) };
      }
      return { ...base, kind: "json", loose: false };
    }
    case "object": {
      const props = s["properties"];
      if (isObj(props) && Object.keys(props).length > 0 && depth < 6) {
        return { ...base, kind: "object", fields: objectFields(s, root, depth + 1) };
      }
      return { ...base, kind: "json", loose: false };
    }
    default:
      // no type: any JSON value (``payload``, ``value``); plain text is taken as a string
      return { ...base, kind: "json", loose: true };
  }
}

export function objectFields(s: JSONSchema, root: JSONSchema, depth = 0): Field[] {
  const props = isObj(s["properties"]) ? s["properties"] : {};
  const req = new Set(Array.isArray(s["required"]) ? (s["required"] as string[]) : []);
  return Object.entries(props)
    .filter(([, v]) => isObj(v))
    .map(([k, v]) => toField(k, v as JSONSchema, root, req.has(k), depth));
}

/** The form of a node type's params. */
export function formFields(root: JSONSchema): Field[] {
  return objectFields(paramsSchema(root), root);
}

/** A fresh value for a new array item (required fields filled with their defaults). */
export function emptyValue(f: Field): unknown {
  if (f.hasDefault) return structuredClone(f.default);
  switch (f.kind) {
    case "object": {
      const out: Record<string, unknown> = {};
      for (const sub of f.fields) {
        if (sub.required) out[sub.name] = emptyValue(sub);
      }
      return out;
    }
    case "array":
      return [];
    case "enum":
      return f.options[0];
    case "boolean":
      return false;
    case "number":
    case "integer":
      return f.minimum ?? 0;
    case "json":
      return f.loose ? null : {};
    default:
      return "";
  }
}

/** Immutable set at a path; ``undefined`` removes an object key. */
export function setIn(obj: unknown, path: (string | number)[], value: unknown): unknown {
  if (path.length === 0) return value;
  const [head, ...rest] = path;
  if (typeof head === "number") {
    const arr = Array.isArray(obj) ? [...obj] : [];
    arr[head] = setIn(arr[head], rest, value);
    return arr;
  }
  const o: Record<string, unknown> = isObj(obj) ? { ...obj } : {};
  const next = setIn(o[head!], rest, value);
  if (next === undefined) delete o[head!];
  else o[head!] = next;
  return o;
}

export function getIn(obj: unknown, path: (string | number)[]): unknown {
  let cur: unknown = obj;
  for (const p of path) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<string | number, unknown>)[p];
  }
  return cur;
}

/** Check one value against a numeric field's bounds (the server checks again). */
export function boundsProblem(f: Field, v: number): string | null {
  if (f.kind !== "number" && f.kind !== "integer") return null;
  if (f.kind === "integer" && !Number.isInteger(v)) return "must be a whole number";
  if (f.minimum !== undefined && v < f.minimum) return `must be >= ${f.minimum}`;
  if (f.maximum !== undefined && v > f.maximum) return `must be <= ${f.maximum}`;
  if (f.exclusiveMinimum !== undefined && v <= f.exclusiveMinimum) return `must be > ${f.exclusiveMinimum}`;
  if (f.exclusiveMaximum !== undefined && v >= f.exclusiveMaximum) return `must be < ${f.exclusiveMaximum}`;
  return null;
}

// -- node type metadata -----------------------------------------------------------------------

// Used only when the server's schema carries no ``x-mechaway`` block (older daemons).
const SOURCES = new Set(["InjectNode", "MQTTInNode", "GPIOInNode", "SerialInNode", "ModbusReadNode", "I2CReadNode"]);
const SINKS = new Set(["LogNode", "MQTTOutNode", "StoreNode", "KVSetNode", "UpstreamNode", "VectorStoreNode", "VectorQueryNode", "GPIOOutNode", "SerialOutNode", "ModbusWriteNode"]);
const STORAGE = new Set(["StoreNode", "KVSetNode", "KVGetNode", "UpstreamNode", "VectorStoreNode", "VectorQueryNode"]);
const HARDWARE = /GPIO|Serial|Modbus|I2C/;
const STATIC_PORTS: Record<string, string[]> = {
  KVGetNode: ["out", "missing"],
  VectorQueryNode: ["out", "anomaly"],
  UpstreamNode: ["out"],
  KVSetNode: ["out"],
  VectorStoreNode: ["out"],
  StoreNode: [],
  LogNode: [],
  MQTTOutNode: [],
};

const KINDS: Kind[] = ["source", "pure", "sink"];
const GROUPS: Group[] = ["sources", "logic", "storage", "sinks", "hardware"];
export const GROUP_ORDER: Group[] = GROUPS;

export function typeMeta(type: string, schema: JSONSchema): TypeMeta {
  const x = schema["x-mechaway"];
  const description = typeof schema["description"] === "string" ? (schema["description"] as string).replace(/``/g, "") : "";
  if (isObj(x) && KINDS.includes(x["kind"] as Kind)) {
    const kind = x["kind"] as Kind;
    const group = GROUPS.includes(x["group"] as Group)
      ? (x["group"] as Group)
      : kind === "source" ? "sources" : kind === "sink" ? "sinks" : "logic";
    const ports = Array.isArray(x["ports"])
      ? (x["ports"] as unknown[]).filter((p): p is string => typeof p === "string" && p !== "error")
      : kind === "sink" ? [] : ["out"];
    return { type, kind, group, ports, description, schema, derived: false };
  }
  const kind: Kind = SOURCES.has(type) ? "source" : SINKS.has(type) ? "sink" : "pure";
  const group: Group = HARDWARE.test(type)
    ? "hardware"
    : STORAGE.has(type) ? "storage" : kind === "source" ? "sources" : kind === "sink" ? "sinks" : "logic";
  const ports = STATIC_PORTS[type] ?? (kind === "sink" ? [] : ["out"]);
  return { type, kind, group, ports, description, schema, derived: true };
}

/** Output ports of a node with these params: static ones, ``ports: [...]`` params, the
 *  ports RouteNode-style ``rules[].port`` name, and ``error`` last. */
export function portsFor(meta: TypeMeta | undefined, params: Record<string, unknown> | undefined): string[] {
  const out: string[] = [...(meta?.ports ?? ["out"])];
  const add = (p: unknown) => {
    if (typeof p === "string" && p && !out.includes(p) && p !== "error") out.push(p);
  };
  const props = meta ? paramsSchema(meta.schema)["properties"] : undefined;
  const declared = (k: string) => !meta || (isObj(props) && k in props);
  if (params) {
    if (Array.isArray(params["ports"]) && declared("ports")) params["ports"].forEach(add);
    if (Array.isArray(params["rules"]) && declared("rules")) {
      for (const r of params["rules"]) if (isObj(r)) add(r["port"]);
    }
  }
  if (meta?.type === "RouteNode") {
    // a RouteNode emits only on the ports its rules name
    const named = new Set(
      Array.isArray(params?.["rules"]) ? (params["rules"] as unknown[]).map((r) => (isObj(r) ? r["port"] : null)) : [],
    );
    if (!named.has("out")) {
      const i = out.indexOf("out");
      if (i >= 0) out.splice(i, 1);
    }
  }
  out.push("error");
  return out;
}
