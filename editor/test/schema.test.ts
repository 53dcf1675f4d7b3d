import { describe, expect, it } from "vitest";
import { boundsProblem, emptyValue, formFields, portsFor, setIn, typeMeta, type Field } from "../src/lib/schema";
import type { JSONSchema } from "../src/lib/types";

// shapes as msgspec writes them (GET /api/v1/schema)
const change: JSONSchema = {
  $ref: "#/$defs/ChangeParams",
  $defs: {
    ChangeParams: {
      type: "object",
      properties: { rules: { type: "array", items: { $ref: "#/$defs/ChangeRule" } } },
      required: ["rules"],
    },
    ChangeRule: {
      description: "set path to value",
      type: "object",
      properties: {
        op: { enum: ["delete", "move", "set"] },
        path: { type: "string" },
        value: { default: null },
        from: { anyOf: [{ type: "string" }, { type: "null" }], default: null },
      },
      required: ["op", "path"],
    },
  },
  title: "ChangeNode",
};

const lua: JSONSchema = {
  $ref: "#/$defs/P",
  $defs: {
    P: {
      type: "object",
      properties: {
        script: { type: "string", description: "Lua source" },
        ports: { type: "array", items: { type: "string" }, default: [] },
        wall_time_ms: { type: "number", exclusiveMinimum: 0, maximum: 1000, default: 100.0 },
        max_memory_kb: { type: "integer", minimum: 256, maximum: 262144, default: 8192 },
        persist: { type: "boolean", default: false },
      },
      required: ["script"],
    },
  },
  "x-mechaway": { kind: "pure", ports: ["out"], group: "logic" },
};

const byName = (fs: Field[], n: string) => fs.find((f) => f.name === n)!;

describe("schema -> form", () => {
  it("resolves $ref, arrays of rule objects, enums and nullable unions", () => {
    const fields = formFields(change);
    expect(fields.map((f) => f.name)).toEqual(["rules"]);
    const rules = byName(fields, "rules");
    expect(rules.kind).toBe("array");
    expect(rules.required).toBe(true);
    if (rules.kind !== "array" || rules.item.kind !== "object") throw new Error("shape");
    expect(rules.item.description).toBe("set path to value");
    const op = byName(rules.item.fields, "op");
    expect(op.kind).toBe("enum");
    if (op.kind === "enum") expect(op.options).toEqual(["delete", "move", "set"]);
    const from = byName(rules.item.fields, "from");
    expect(from.kind).toBe("string");
    expect(from.nullable).toBe(true);
    expect(from.hasDefault).toBe(true);
    expect(byName(rules.item.fields, "value")).toMatchObject({ kind: "json", loose: true });
  });

  it("keeps bounds, defaults and descriptions; a script is a Lua code field", () => {
    const fields = formFields(lua);
    expect(byName(fields, "script")).toMatchObject({ kind: "code", language: "lua", description: "Lua source", required: true });
    const wall = byName(fields, "wall_time_ms");
    expect(wall).toMatchObject({ kind: "number", exclusiveMinimum: 0, maximum: 1000, default: 100 });
    expect(boundsProblem(wall, 0)).toBe("must be > 0");
    expect(boundsProblem(wall, 1001)).toBe("must be <= 1000");
    expect(boundsProblem(wall, 50)).toBeNull();
    const mem = byName(fields, "max_memory_kb");
    expect(boundsProblem(mem, 300.5)).toBe("must be a whole number");
    expect(boundsProblem(mem, 100)).toBe("must be >= 256");
    expect(byName(fields, "persist")).toMatchObject({ kind: "boolean", default: false });
  });

  it("a new array item fills its required fields", () => {
    const rules = byName(formFields(change), "rules");
    if (rules.kind !== "array") throw new Error("shape");
    expect(emptyValue(rules.item)).toEqual({ op: "delete", path: "" });
  });

  it("setIn is immutable and removes keys set to undefined", () => {
    const before = { rules: [{ op: "set", path: "a" }], keep: 1 };
    const after = setIn(before, ["rules", 0, "path"], "b") as typeof before;
    expect(after.rules[0]!.path).toBe("b");
    expect(before.rules[0]!.path).toBe("a");
    expect(after.keep).toBe(1);
    expect(setIn(after, ["keep"], undefined)).toEqual({ rules: [{ op: "set", path: "b" }] });
  });
});

describe("node type metadata", () => {
  it("takes kind, group and ports from x-mechaway", () => {
    const m = typeMeta("FunLogicNode", lua);
    expect(m).toMatchObject({ kind: "pure", group: "logic", ports: ["out"], derived: false });
    // declared ``ports`` params add ports; error is always last
    expect(portsFor(m, { ports: ["hot", "cold"] })).toEqual(["out", "hot", "cold", "error"]);
  });

  it("derives what it can without x-mechaway", () => {
    expect(typeMeta("InjectNode", {})).toMatchObject({ kind: "source", group: "sources", derived: true });
    expect(typeMeta("StoreNode", {})).toMatchObject({ kind: "sink", group: "storage", ports: [] });
    expect(portsFor(typeMeta("LogNode", {}), {})).toEqual(["error"]);
  });

  it("a RouteNode's ports are its rules' ports", () => {
    const route = typeMeta("RouteNode", {
      $ref: "#/$defs/R",
      $defs: { R: { type: "object", properties: { rules: { type: "array" } } } },
      "x-mechaway": { kind: "pure", ports: ["out"], group: "logic" },
    });
    expect(portsFor(route, { rules: [{ port: "hot" }, { port: "cold" }, { port: "hot" }] })).toEqual(["hot", "cold", "error"]);
  });
});
