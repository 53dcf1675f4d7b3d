import { describe, expect, it } from "vitest";
import { applyCounters } from "../src/lib/counters";
import { KeyedStore } from "../src/lib/store";
import type { Counters } from "../src/lib/types";
import { locate, shortMessage } from "../src/lib/validation";
import { parseFlowResponse } from "../src/lib/api";

describe("counters store", () => {
  it("notifies only the nodes whose counters changed", () => {
    const store = new KeyedStore<Counters>();
    const heard: string[] = [];
    for (const k of ["f/a", "f/b", "g/a"]) store.subscribe(k, () => heard.push(k));
    applyCounters(store, { f: { a: { in: 1, out: 1, errors: 0, dropped: 0 }, b: { in: 0, out: 0, errors: 0, dropped: 0 } } });
    expect(heard.sort()).toEqual(["f/a", "f/b"]);
    heard.length = 0;
    const changed = applyCounters(store, { f: { a: { in: 1, out: 1, errors: 0, dropped: 0 }, b: { in: 5, out: 4, errors: 1, dropped: 0 } } });
    expect(changed).toEqual(["f/b"]);
    expect(heard).toEqual(["f/b"]);
    expect(store.get("f/b")).toEqual({ in: 5, out: 4, errors: 1, dropped: 0 });
  });
  it("unsubscribes, and replaceAll drops keys no longer present", () => {
    const store = new KeyedStore<number>();
    let n = 0;
    const off = store.subscribe("x", () => n++);
    store.set("x", 1);
    off();
    store.set("x", 2);
    expect(n).toBe(1);
    expect(store.listenerCount("x")).toBe(0);
    store.set("y", 1);
    expect(store.replaceAll([["x", 2]]).sort()).toEqual(["y"]);
    expect(store.keys()).toEqual(["x"]);
  });
  it("ignores malformed counter values", () => {
    const store = new KeyedStore<Counters>();
    applyCounters(store, { f: { a: { in: "7" as unknown as number, out: 2 } } });
    expect(store.get("f/a")).toEqual({ in: 0, out: 2, errors: 0, dropped: 0 });
  });
});

describe("validation errors located on nodes", () => {
  const doc = { id: "f", nodes: [{ id: "tick", type: "InjectNode" }, { id: "hot", type: "RouteNode" }], edges: [{ from: "tick", to: "hot" }] };
  it("uses node/param when given, else parses where", () => {
    const loc = locate(
      [
        { where: "nodes[1] (hot).params.rules[0].op", node: "hot", param: "rules", message: "bad op" },
        { where: "nodes[0].params.interval", message: "must be > 0" },
        { where: "edges[0]", message: "no such port" },
        { where: "id", message: "bad id" },
        { where: "nodes[1] (hot).params", node: "hot", message: "missing required key `rules`" },
      ],
      doc,
    );
    expect(loc.byNode.get("hot")!.map((e) => [e.param, e.message])).toEqual([
      ["rules", "bad op"],
      ["rules", "missing required key `rules`"],
    ]);
    expect(loc.byNode.get("tick")!.map((e) => [e.param, e.message])).toEqual([
      ["interval", "must be > 0"],
      [undefined, "no such port"],
    ]);
    expect(loc.flow.map((e) => e.message)).toEqual(["bad id"]);
  });
});

describe("GET /flows/{id} parsing", () => {
  it("takes the revision from the ETag and the document from 'flow'", () => {
    const lf = parseFlowResponse({ rev: 3, source: "file", file: "flows/a.json", flow: { id: "a", nodes: [] } }, '"4"');
    expect(lf).toEqual({ doc: { id: "a", nodes: [] }, rev: 4, source: "file", file: "flows/a.json" });
    expect(parseFlowResponse({ rev: 3, source: "api", id: "a", nodes: [] }, null)).toMatchObject({ doc: { id: "a", nodes: [] }, rev: 3 });
  });
});

describe("error messages beside their param and line", () => {
  it("drops the param and line the editor already shows", () => {
    expect(shortMessage({ where: "", param: "script", line: 3, message: "script: lua: line 3: unexpected symbol near '='" })).toBe("unexpected symbol near '='");
    expect(shortMessage({ where: "", param: "interval", message: "expected `float` > 0.0" })).toBe("expected `float` > 0.0");
  });
});
