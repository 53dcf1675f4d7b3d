;; threshold.wat: the mechaway WASM ABI (mechaway/logic/WASM-ABI.md) by hand.
;;
;; In:  a msgpack map, e.g. {"topic": "gh/1", "seq": 7, "payload": {"temp": 31.5}}
;; Out: the same map with "payload" replaced by "on" (temp > 30) or "off"; every other
;;      entry (seq, topic, ts, ...) is copied byte for byte, so seq is kept.
;; Error (negative return): input not a map, or payload.temp missing / not a number.
;;
;; Keys are matched on their msgpack bytes (fixstr), which is how every msgpack
;; encoder writes short strings. No imports, no WASI.
(module
  (memory (export "memory") 1)

  ;; bump allocator: the host reuses the buffer alloc() hands out, so it rarely grows
  (global $heap (mut i32) (i32.const 1024))
  ;; output buffer, reused across calls (the host copies the output at once)
  (global $out (mut i32) (i32.const 0))
  (global $out_cap (mut i32) (i32.const 0))
  ;; out-parameters of $map_header and $num
  (global $hdr (mut i32) (i32.const 0))
  (global $ok (mut i32) (i32.const 0))

  (data (i32.const 16) "\a7payload")                             ;; 8 bytes
  (data (i32.const 32) "\a4temp")                                ;; 5 bytes
  (data (i32.const 48) "\a2on")                                  ;; 3 bytes
  (data (i32.const 56) "\a3off")                                 ;; 4 bytes
  (data (i32.const 64) "input is not a msgpack map")             ;; 26 bytes
  (data (i32.const 96) "payload.temp missing or not a number")   ;; 36 bytes
  (data (i32.const 144) "out of memory")                         ;; 13 bytes
  ;; msgpack 0xc4..0xdf: (length-field bytes, fixed extra bytes, kind 0=data 1=array 2=map)
  (data (i32.const 160)
    "\01\00\00" "\02\00\00" "\04\00\00"              ;; c4-c6 bin8/16/32
    "\01\01\00" "\02\01\00" "\04\01\00"              ;; c7-c9 ext8/16/32 (+ type byte)
    "\00\04\00" "\00\08\00"                          ;; ca-cb float32/64
    "\00\01\00" "\00\02\00" "\00\04\00" "\00\08\00"  ;; cc-cf uint8..64
    "\00\01\00" "\00\02\00" "\00\04\00" "\00\08\00"  ;; d0-d3 int8..64
    "\00\02\00" "\00\03\00" "\00\05\00" "\00\09\00" "\00\11\00"  ;; d4-d8 fixext1..16
    "\01\00\00" "\02\00\00" "\04\00\00"              ;; d9-db str8/16/32
    "\02\00\01" "\04\00\01"                          ;; dc-dd array16/32
    "\02\00\02" "\04\00\02")                         ;; de-df map16/32

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $pages i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (local.set $pages (i32.add (i32.shr_u (local.get $end) (i32.const 16))
                               (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        ;; past the host's memory limit memory.grow returns -1: report 0
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  ;; (ptr << 32) | len: the ABI's packed return value
  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  ;; an error: bit 63 set, then the packed UTF-8 message
  (func $fail (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.const 0x8000000000000000) (call $pack (local.get $p) (local.get $n))))

  ;; p + n if that stays within end, else 0 (p <= end holds on entry)
  (func $adv (param $p i32) (param $n i32) (param $end i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $n) (i32.sub (local.get $end) (local.get $p)))
      (then (i32.const 0))
      (else (i32.add (local.get $p) (local.get $n)))))

  ;; big-endian unsigned integer of n bytes at p
  (func $be (param $p i32) (param $n i32) (result i64)
    (local $v i64)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $v (i64.or (i64.shl (local.get $v) (i64.const 8)) (i64.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $v))

  ;; position after the msgpack value at p, or 0 if it is malformed or truncated
  (func $skip (param $p i32) (param $end i32) (result i32)
    (local $b i32) (local $t i32) (local $h i32) (local $n i32)
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
    (local.set $b (i32.load8_u (local.get $p)))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    ;; positive and negative fixint
    (if (i32.or (i32.lt_u (local.get $b) (i32.const 0x80)) (i32.ge_u (local.get $b) (i32.const 0xe0)))
      (then (return (local.get $p))))
    ;; fixmap, fixarray, fixstr
    (if (i32.lt_u (local.get $b) (i32.const 0x90))
      (then (return (call $skip_n (local.get $p) (local.get $end)
                      (i32.shl (i32.and (local.get $b) (i32.const 15)) (i32.const 1))))))
    (if (i32.lt_u (local.get $b) (i32.const 0xa0))
      (then (return (call $skip_n (local.get $p) (local.get $end) (i32.and (local.get $b) (i32.const 15))))))
    (if (i32.lt_u (local.get $b) (i32.const 0xc0))
      (then (return (call $adv (local.get $p) (i32.and (local.get $b) (i32.const 31)) (local.get $end)))))
    ;; nil, false, true; 0xc1 is never used
    (if (i32.le_u (local.get $b) (i32.const 0xc3))
      (then (return (select (i32.const 0) (local.get $p) (i32.eq (local.get $b) (i32.const 0xc1))))))
    ;; 0xc4..0xdf from the table
    (local.set $t (i32.add (i32.const 160) (i32.mul (i32.sub (local.get $b) (i32.const 0xc4)) (i32.const 3))))
    (local.set $h (i32.load8_u (local.get $t)))
    (if (i32.eqz (call $adv (local.get $p) (local.get $h) (local.get $end))) (then (return (i32.const 0))))
    (local.set $n (i32.wrap_i64 (call $be (local.get $p) (local.get $h))))
    (local.set $p (i32.add (local.get $p) (local.get $h)))
    (if (i32.eq (i32.load8_u offset=2 (local.get $t)) (i32.const 1))
      (then (return (call $skip_n (local.get $p) (local.get $end) (local.get $n)))))
    (if (i32.eq (i32.load8_u offset=2 (local.get $t)) (i32.const 2))
      (then
        ;; every entry takes at least two bytes: refuse counts that cannot fit
        (if (i32.gt_u (local.get $n) (i32.sub (local.get $end) (local.get $p))) (then (return (i32.const 0))))
        (return (call $skip_n (local.get $p) (local.get $end) (i32.shl (local.get $n) (i32.const 1))))))
    (local.set $p (call $adv (local.get $p) (i32.load8_u offset=1 (local.get $t)) (local.get $end)))
    (if (i32.eqz (local.get $p)) (then (return (i32.const 0))))
    (call $adv (local.get $p) (local.get $n) (local.get $end)))

  (func $skip_n (param $p i32) (param $end i32) (param $count i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $count)))
        (local.set $p (call $skip (local.get $p) (local.get $end)))
        (if (i32.eqz (local.get $p)) (then (return (i32.const 0))))
        (local.set $count (i32.sub (local.get $count) (i32.const 1)))
        (br $next)))
    (local.get $p))

  ;; entry count of the map at p (header length in $hdr), $hdr = 0 if not a map
  (func $map_header (param $p i32) (param $end i32) (result i32)
    (local $b i32)
    (global.set $hdr (i32.const 0))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (i32.const 0))))
    (local.set $b (i32.load8_u (local.get $p)))
    (if (i32.eq (i32.and (local.get $b) (i32.const 0xf0)) (i32.const 0x80))
      (then (global.set $hdr (i32.const 1)) (return (i32.and (local.get $b) (i32.const 15)))))
    (if (i32.and (i32.eq (local.get $b) (i32.const 0xde))
                 (i32.ne (call $adv (local.get $p) (i32.const 3) (local.get $end)) (i32.const 0)))
      (then (global.set $hdr (i32.const 3))
            (return (i32.wrap_i64 (call $be (i32.add (local.get $p) (i32.const 1)) (i32.const 2))))))
    (if (i32.and (i32.eq (local.get $b) (i32.const 0xdf))
                 (i32.ne (call $adv (local.get $p) (i32.const 5) (local.get $end)) (i32.const 0)))
      (then (global.set $hdr (i32.const 5))
            (return (i32.wrap_i64 (call $be (i32.add (local.get $p) (i32.const 1)) (i32.const 4))))))
    (i32.const 0))

  ;; do the bytes [p, q) equal the n bytes at lit?
  (func $eq (param $p i32) (param $q i32) (param $lit i32) (param $n i32) (result i32)
    (if (i32.ne (i32.sub (local.get $q) (local.get $p)) (local.get $n)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (if (i32.ne (i32.load8_u (local.get $p)) (i32.load8_u (local.get $lit))) (then (return (i32.const 0))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $lit (i32.add (local.get $lit) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  ;; the msgpack number at p as f64; $ok = 1 if it was one
  (func $num (param $p i32) (param $end i32) (result f64)
    (local $b i32) (local $n i32) (local $shift i64)
    (global.set $ok (i32.const 0))
    (if (i32.ge_u (local.get $p) (local.get $end)) (then (return (f64.const 0))))
    (local.set $b (i32.load8_u (local.get $p)))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (if (i32.lt_u (local.get $b) (i32.const 0x80))
      (then (global.set $ok (i32.const 1)) (return (f64.convert_i32_u (local.get $b)))))
    (if (i32.ge_u (local.get $b) (i32.const 0xe0))
      (then (global.set $ok (i32.const 1))
            (return (f64.convert_i32_s (i32.sub (local.get $b) (i32.const 256))))))
    (if (i32.lt_u (i32.sub (local.get $b) (i32.const 0xca)) (i32.const 10))
      (then
        ;; ca f32, cb f64, cc-cf uint8..64, d0-d3 int8..64
        (local.set $n (select (i32.const 4) (i32.const 8) (i32.eq (local.get $b) (i32.const 0xca))))
        (if (i32.ge_u (local.get $b) (i32.const 0xcc))
          (then (local.set $n (i32.shl (i32.const 1) (i32.and (i32.sub (local.get $b) (i32.const 0xcc)) (i32.const 3))))))
        (if (i32.eqz (call $adv (local.get $p) (local.get $n) (local.get $end))) (then (return (f64.const 0))))
        (global.set $ok (i32.const 1))
        (if (i32.eq (local.get $b) (i32.const 0xca))
          (then (return (f64.promote_f32 (f32.reinterpret_i32 (i32.wrap_i64 (call $be (local.get $p) (i32.const 4))))))))
        (if (i32.eq (local.get $b) (i32.const 0xcb))
          (then (return (f64.reinterpret_i64 (call $be (local.get $p) (i32.const 8))))))
        (if (i32.lt_u (local.get $b) (i32.const 0xd0))
          (then (return (f64.convert_i64_u (call $be (local.get $p) (local.get $n))))))
        ;; signed: sign-extend the n-byte value
        (local.set $shift (i64.extend_i32_u (i32.sub (i32.const 64) (i32.shl (local.get $n) (i32.const 3)))))
        (return (f64.convert_i64_s
                  (i64.shr_s (i64.shl (call $be (local.get $p) (local.get $n)) (local.get $shift))
                             (local.get $shift))))))
    (f64.const 0))

  ;; payload.temp from the map at [p, end); $ok = 1 if found and numeric
  (func $find_temp (param $p i32) (param $end i32) (result f64)
    (local $n i32) (local $v i32) (local $next i32)
    (global.set $ok (i32.const 0))
    (local.set $n (call $map_header (local.get $p) (local.get $end)))
    (if (i32.eqz (global.get $hdr)) (then (return (f64.const 0))))
    (local.set $p (i32.add (local.get $p) (global.get $hdr)))
    (block $done
      (loop $entry
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $v (call $skip (local.get $p) (local.get $end)))
        (br_if $done (i32.eqz (local.get $v)))
        (local.set $next (call $skip (local.get $v) (local.get $end)))
        (br_if $done (i32.eqz (local.get $next)))
        (if (call $eq (local.get $p) (local.get $v) (i32.const 32) (i32.const 5))
          (then (return (call $num (local.get $v) (local.get $next)))))
        (local.set $p (local.get $next))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $entry)))
    (f64.const 0))

  (func (export "process") (param $in i32) (param $len i32) (result i64)
    (local $end i32) (local $n i32) (local $p i32) (local $o i32)
    (local $v i32) (local $next i32) (local $found i32) (local $temp f64) (local $need i32)
    (local.set $end (i32.add (local.get $in) (local.get $len)))
    ;; the output is never longer than the input: "on"/"off" replace a map of >= 7 bytes
    (local.set $need (i32.add (local.get $len) (i32.const 16)))
    (if (i32.gt_u (local.get $need) (global.get $out_cap))
      (then
        (global.set $out (call $alloc (local.get $need)))
        (if (i32.eqz (global.get $out))
          (then (global.set $out_cap (i32.const 0))
                (return (call $fail (i32.const 144) (i32.const 13)))))
        (global.set $out_cap (local.get $need))))
    (local.set $n (call $map_header (local.get $in) (local.get $end)))
    (if (i32.eqz (global.get $hdr)) (then (return (call $fail (i32.const 64) (i32.const 26)))))
    (memory.copy (global.get $out) (local.get $in) (global.get $hdr))
    (local.set $o (i32.add (global.get $out) (global.get $hdr)))
    (local.set $p (i32.add (local.get $in) (global.get $hdr)))
    (block $done
      (loop $entry
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $v (call $skip (local.get $p) (local.get $end)))
        (if (i32.eqz (local.get $v)) (then (return (call $fail (i32.const 64) (i32.const 26)))))
        (local.set $next (call $skip (local.get $v) (local.get $end)))
        (if (i32.eqz (local.get $next)) (then (return (call $fail (i32.const 64) (i32.const 26)))))
        (if (call $eq (local.get $p) (local.get $v) (i32.const 16) (i32.const 8))
          (then
            (local.set $temp (call $find_temp (local.get $v) (local.get $next)))
            (if (i32.eqz (global.get $ok)) (then (return (call $fail (i32.const 96) (i32.const 36)))))
            (local.set $found (i32.const 1))
            (memory.copy (local.get $o) (local.get $p) (i32.const 8))
            (local.set $o (i32.add (local.get $o) (i32.const 8)))
            (if (f64.gt (local.get $temp) (f64.const 30))
              (then (memory.copy (local.get $o) (i32.const 48) (i32.const 3))
                    (local.set $o (i32.add (local.get $o) (i32.const 3))))
              (else (memory.copy (local.get $o) (i32.const 56) (i32.const 4))
                    (local.set $o (i32.add (local.get $o) (i32.const 4))))))
          (else
            (memory.copy (local.get $o) (local.get $p) (i32.sub (local.get $next) (local.get $p)))
            (local.set $o (i32.add (local.get $o) (i32.sub (local.get $next) (local.get $p))))))
        (local.set $p (local.get $next))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $entry)))
    (if (i32.eqz (local.get $found)) (then (return (call $fail (i32.const 96) (i32.const 36)))))
    (call $pack (global.get $out) (i32.sub (local.get $o) (global.get $out))))
)
