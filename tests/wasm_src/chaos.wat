;; chaos.wat: a module that breaks the rules on request, for the sandbox tests.
;;
;; The mode is the last byte of the input. For a msgpack message {"do": k} with
;; 0 <= k < 128 that byte is k itself (positive fixint):
;;   0 echo the input            1 endless loop             2 grow memory until refused, trap
;;   3 output pointer past memory 4 output runs off the end  5 undecodable output (0xc1)
;;   6 trap (unreachable)        7 module error "boom: ..."  8 drop (return 0)
;;   9 output is a bare int      10 [[port, map], ...] pairs 11 unbounded recursion
;;   12 {"calls": n}, n = calls since instantiation          13 return -1
;;   14 malformed [port, map] list
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 16) "\c1\c1\c1\c1")                                       ;; mode 5
  (data (i32.const 24) "\05")                                                ;; mode 9
  (data (i32.const 32) "\92\92\a1a\81\a1n\01\92\a1b\80")                     ;; mode 10, 12 bytes
  (data (i32.const 48) "\81\a5calls\00")                                     ;; mode 12, 8 bytes
  (data (i32.const 64) "boom: the module says no")                           ;; mode 7, 24 bytes
  (data (i32.const 96) "\91\92\01\80")                                       ;; mode 14, 4 bytes

  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $pages i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (local.set $pages (i32.add (i32.shr_u (local.get $end) (i32.const 16))
                               (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  (func $recurse (param $n i32) (result i32)
    (i32.add (call $recurse (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))

  (func (export "process") (param $in i32) (param $len i32) (result i64)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (block $b14 (block $b13 (block $b12 (block $b11 (block $b10 (block $b9 (block $b8
    (block $b7 (block $b6 (block $b5 (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
      (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $b11 $b12 $b13 $b14 $b0
        (i32.load8_u (i32.sub (i32.add (local.get $in) (local.get $len)) (i32.const 1)))))
      ;; 0: echo
      (return (call $pack (local.get $in) (local.get $len))))
      ;; 1: endless loop
      (loop $forever (br $forever))
      (unreachable))
      ;; 2: grow one page at a time until refused, then give up like C's abort()
      (block $refused
        (loop $more
          (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
          (br $more)))
      (unreachable))
      ;; 3: pointer far outside memory
      (return (call $pack (i32.const 0x7fff0000) (i32.const 16))))
      ;; 4: starts inside memory, runs past its end
      (return (call $pack (i32.const 65000) (i32.const 4096))))
      ;; 5: bytes that are not msgpack
      (return (call $pack (i32.const 16) (i32.const 4))))
      ;; 6: trap
      (unreachable))
      ;; 7: module-reported error
      (return (i64.or (i64.const 0x8000000000000000) (call $pack (i32.const 64) (i32.const 24)))))
      ;; 8: drop
      (return (i64.const 0)))
      ;; 9: valid msgpack, wrong shape
      (return (call $pack (i32.const 24) (i32.const 1))))
      ;; 10: [["a", {"n": 1}], ["b", {}]]
      (return (call $pack (i32.const 32) (i32.const 12))))
      ;; 11: unbounded recursion
      (drop (call $recurse (i32.const 0)))
      (unreachable))
      ;; 12: {"calls": n} (n < 128)
      (i32.store8 (i32.const 55) (global.get $calls))
      (return (call $pack (i32.const 48) (i32.const 8))))
      ;; 13: -1: error bit set, message pointer out of range
      (return (i64.const -1)))
    ;; 14: [[1, {}]]: a pair whose port is not a string
    (call $pack (i32.const 96) (i32.const 4)))
)
