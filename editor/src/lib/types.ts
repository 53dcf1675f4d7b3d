/** The flow document as the API serves it, plus what the editor keeps beside it. */

export interface NodeUi {
  x: number;
  y: number;
  [key: string]: unknown;
}

export interface FlowNodeDoc {
  id: string;
  type: string;
  params?: Record<string, unknown>;
  name?: string;
  ui?: NodeUi;
  [key: string]: unknown;
}

export interface FlowEdgeDoc {
  from: string;
  to: string;
  port?: string;
}

/** The flow-level keys (everything but nodes and edges). */
export interface FlowMeta {
  id: string;
  name?: string;
  disabled?: boolean;
  ui?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface FlowDoc extends FlowMeta {
  nodes: FlowNodeDoc[];
  edges?: FlowEdgeDoc[];
}

export interface Counters {
  in: number;
  out: number;
  errors: number;
  dropped: number;
}

export interface ValidationError {
  where: string;
  node?: string;
  param?: string;
  line?: number;
  message: string;
}

export type Kind = "source" | "pure" | "sink";
export type Group = "sources" | "logic" | "storage" | "sinks" | "hardware";

export type JSONSchema = { [key: string]: unknown };

export interface TypeMeta {
  type: string;
  kind: Kind;
  group: Group;
  /** static output ports (``error`` excluded; it is always there) */
  ports: string[];
  description: string;
  schema: JSONSchema;
  /** true when kind/group/ports were guessed because the server sent no ``x-mechaway`` */
  derived: boolean;
}
