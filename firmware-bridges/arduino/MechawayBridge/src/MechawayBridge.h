// MechawayBridge: the mechaway bridge protocol v1 (../../../PROTOCOL.md) for
// microcontrollers. Header-only, no heap, no Arduino dependency (the sketch passes its
// I/O as plain functions), so the same code runs on AVR, ESP32 and the host's g++ (where
// it is tested against ../../../test-vectors.json).
//
//   Framer<96>  : bytes in, one complete frame or framing error out (line or COBS+CRC)
//   Writer      : builds one message as JSON or msgpack into a caller's buffer
//   parseCommand: reads a host command (JSON or msgpack) into a Command
//   Bridge<Framing::Line, 96, 96>: hello, readings, heartbeats, acks and errors; obeys pin/pwm/custom
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef MECHAWAY_STR_MAX
#define MECHAWAY_STR_MAX 32  // longest command name / string argument kept (protocol: 32)
#endif

namespace mechaway {

static const uint8_t kProtocolVersion = 1;

enum class Framing : uint8_t { Line, Cobs };

// The protocol's closed set of framing/decoding error codes (PROTOCOL.md section 3).
enum class Err : uint8_t { None, Oversize, Cobs, Short, Crc, Msgpack, Utf8, Json, Schema, Version };

inline const char* errName(Err e) {
  switch (e) {
    case Err::None: return "none";
    case Err::Oversize: return "oversize";
    case Err::Cobs: return "cobs";
    case Err::Short: return "short";
    case Err::Crc: return "crc";
    case Err::Msgpack: return "msgpack";
    case Err::Utf8: return "utf8";
    case Err::Json: return "json";
    case Err::Schema: return "schema";
    case Err::Version: return "version";
  }
  return "?";
}

// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0; check 0x29B1.
inline uint16_t crc16(const uint8_t* data, size_t n, uint16_t crc = 0xFFFF) {
  while (n--) {
    crc ^= (uint16_t)(*data++) << 8;
    for (uint8_t i = 0; i < 8; i++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

// Largest COBS encoding of n bytes.
constexpr size_t cobsMax(size_t n) { return n + n / 254 + 1; }

// Decodes a COBS frame (without its 0x00) in place; the decoded length, or -1.
inline long cobsDecode(uint8_t* buf, size_t n) {
  size_t i = 0, w = 0;
  while (i < n) {
    uint8_t code = buf[i];
    if (code == 0 || i + code > n) return -1;
    memmove(buf + w, buf + i + 1, code - 1);
    w += code - 1;
    i += code;
    if (code != 0xFF && i < n) buf[w++] = 0;
  }
  return (long)w;
}

// Writes data as COBS blocks through put(ctx, bytes, n); returns bytes written.
template <class Put>
size_t cobsWrite(const uint8_t* data, size_t n, Put put) {
  size_t start = 0, total = 0;
  for (;;) {
    size_t end = start;
    while (end < n && data[end] != 0 && end - start < 254) end++;
    uint8_t code = (uint8_t)(end - start + 1);
    put(&code, 1);
    put(data + start, end - start);
    total += 1 + end - start;
    if (end == n) break;
    start = (code == 0xFF) ? end : end + 1;  // a full block implies no zero
  }
  return total;
}

// One completed frame (err == None: data/size valid until the next push) or an error.
struct Frame {
  Err err;
  const uint8_t* data;
  size_t size;
};

// Bytes in, frames out: the framing of PROTOCOL.md section 1 for frames up to CAP bytes
// (limit() may lower it at run time). Each error is reported once and resynchronises at
// the next delimiter.
template <size_t CAP>
class Framer {
 public:
  explicit Framer(Framing f = Framing::Line) { setFraming(f); }

  void setFraming(Framing f) { framing_ = f; reset(); setLimit(limit_); }
  Framing framing() const { return framing_; }
  void setLimit(size_t limit) {
    limit_ = limit < CAP ? limit : CAP;
    encLimit_ = cobsMax(limit_ + 2);
  }
  size_t limit() const { return limit_; }
  void reset() { len_ = 0; dropping_ = false; }

  // Feeds one byte; true when `out` holds a frame or an error.
  bool push(uint8_t b, Frame& out) {
    const uint8_t delim = framing_ == Framing::Line ? '\n' : 0;
    if (dropping_) {
      if (b == delim) dropping_ = false;
      return false;
    }
    if (b == delim) return complete(out);
    size_t hold = framing_ == Framing::Line ? limit_ + 1 : encLimit_;
    if (len_ >= hold) {
      len_ = 0;
      dropping_ = true;
      out = Frame{Err::Oversize, nullptr, 0};
      return true;
    }
    buf_[len_++] = b;
    return false;
  }

 private:
  bool complete(Frame& out) {
    size_t n = len_;
    len_ = 0;
    if (framing_ == Framing::Line) {
      if (n && buf_[n - 1] == '\r') n--;
      if (!n) return false;
      out = n > limit_ ? Frame{Err::Oversize, nullptr, 0} : Frame{Err::None, buf_, n};
      return true;
    }
    if (!n) return false;
    long d = cobsDecode(buf_, n);
    if (d < 0) out = Frame{Err::Cobs, nullptr, 0};
    else if (d < 3) out = Frame{Err::Short, nullptr, 0};
    else if (crc16(buf_, (size_t)d) != 0) out = Frame{Err::Crc, nullptr, 0};
    else if ((size_t)d - 2 > limit_) out = Frame{Err::Oversize, nullptr, 0};
    else out = Frame{Err::None, buf_, (size_t)d - 2};
    return true;
  }

  static constexpr size_t kBuf = cobsMax(CAP + 2) > CAP + 1 ? cobsMax(CAP + 2) : CAP + 1;
  uint8_t buf_[kBuf];
  size_t len_ = 0;
  size_t limit_ = CAP;
  size_t encLimit_ = cobsMax(CAP + 2);
  Framing framing_ = Framing::Line;
  bool dropping_ = false;
};

// Builds one message into buf as compact JSON or msgpack, with one interface: maps
// (key/value pairs, item count given up front for msgpack), arrays and scalars. Floats
// are float32 in msgpack; in JSON they are written with up to 3 decimals (|x| < 2e9;
// NaN, infinities and larger values become null).
class Writer {
 public:
  Writer(uint8_t* buf, size_t cap, bool json) : buf_(buf), cap_(cap), json_(json) {}

  void beginMap(uint8_t n) { open(n, true); }
  void beginArray(uint8_t n) { open(n, false); }
  void end() {
    if (!depth_) return;
    depth_--;
    if (json_) put(st_[depth_] & kMap ? '}' : ']');
  }
  void endAll() { while (depth_) end(); }
  void key(const char* k) {
    if (json_) {
      comma();
      quoted(k);
      put(':');
    } else {
      mpStr(k);
    }
  }
  void str(const char* s) {
    pre();
    if (json_) quoted(s); else mpStr(s);
  }
  void u32(uint32_t v) {
    pre();
    if (json_) { digits(v); return; }
    if (v <= 0x7F) put((uint8_t)v);
    else if (v <= 0xFF) { put(0xCC); put((uint8_t)v); }
    else if (v <= 0xFFFF) { put(0xCD); be(v, 2); }
    else { put(0xCE); be(v, 4); }
  }
  void i32(int32_t v) {
    if (v >= 0) { u32((uint32_t)v); return; }
    pre();
    if (json_) { put('-'); digits((uint32_t)(-(v + 1)) + 1u); return; }
    if (v >= -32) put((uint8_t)(int8_t)v);
    else if (v >= -128) { put(0xD0); put((uint8_t)(int8_t)v); }
    else if (v >= -32768) { put(0xD1); be((uint32_t)(uint16_t)(int16_t)v, 2); }
    else { put(0xD2); be((uint32_t)v, 4); }
  }
  void f32(float v) {
    if (!json_) {
      pre();
      uint32_t bits;
      memcpy(&bits, &v, 4);
      put(0xCA);
      be(bits, 4);
      return;
    }
    if (!(v > -2e9f && v < 2e9f)) { nil(); return; }  // NaN fails both tests
    pre();
    if (v < 0) { put('-'); v = -v; }
    uint32_t milli = (uint32_t)(v * 1000.0f + 0.5f);
    uint32_t whole = milli / 1000, frac = milli % 1000;
    digits(whole);
    put('.');
    put((uint8_t)('0' + frac / 100));
    if (frac % 100) {
      put((uint8_t)('0' + frac / 10 % 10));
      if (frac % 10) put((uint8_t)('0' + frac % 10));
    }
  }
  void boolean(bool b) {
    pre();
    if (json_) raw(b ? "true" : "false"); else put(b ? 0xC3 : 0xC2);
  }
  void nil() {
    pre();
    if (json_) raw("null"); else put(0xC0);
  }

  size_t size() const { return len_; }
  bool overflow() const { return overflow_; }
  bool json() const { return json_; }
  void clear() { len_ = 0; depth_ = 0; overflow_ = false; }

 private:
  static const uint8_t kMap = 1, kNotFirst = 2;

  void put(uint8_t b) {
    if (len_ < cap_) buf_[len_++] = b; else overflow_ = true;
  }
  void raw(const char* s) { while (*s) put((uint8_t)*s++); }
  void be(uint32_t v, uint8_t n) { while (n--) put((uint8_t)(v >> (8 * n))); }
  void digits(uint32_t v) {
    char tmp[10];
    uint8_t n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) put((uint8_t)tmp[--n]);
  }
  void comma() {
    if (!depth_) return;
    uint8_t& s = st_[depth_ - 1];
    if (s & kNotFirst) put(',');
    s |= kNotFirst;
  }
  // before a value: in an array, the separator (in a map, key() wrote it)
  void pre() {
    if (json_ && depth_ && !(st_[depth_ - 1] & kMap)) comma();
  }
  void open(uint8_t n, bool map) {
    if (n > 15) overflow_ = true;  // fixmap/fixarray only: up to 15 items
    pre();
    if (json_) put(map ? '{' : '[');
    else put((uint8_t)((map ? 0x80 : 0x90) | (n & 0x0F)));
    if (depth_ < sizeof st_) st_[depth_++] = map ? kMap : 0;
    else overflow_ = true;
  }
  void quoted(const char* s) {
    put('"');
    for (; *s; s++) {
      uint8_t c = (uint8_t)*s;
      if (c == '"' || c == '\\') { put('\\'); put(c); }
      else if (c < 0x20) {
        static const char hex[] = "0123456789abcdef";
        raw("\\u00");
        put((uint8_t)hex[c >> 4]);
        put((uint8_t)hex[c & 15]);
      } else put(c);
    }
    put('"');
  }
  void mpStr(const char* s) {
    size_t n = strlen(s);
    if (n < 32) put((uint8_t)(0xA0 | n));
    else if (n < 256) { put(0xD9); put((uint8_t)n); }
    else { put(0xDA); be((uint32_t)n, 2); }
    for (size_t i = 0; i < n; i++) put((uint8_t)s[i]);
  }

  uint8_t* buf_;
  size_t cap_;
  size_t len_ = 0;
  bool json_;
  bool overflow_ = false;
  uint8_t depth_ = 0;
  uint8_t st_[4] = {0, 0, 0, 0};
};

// --- reading a command (host -> device) ---

enum class ArgType : uint8_t { None, Nil, Bool, Int, Float, Str, Other };

struct Command {
  uint32_t id;
  int32_t pin;
  int32_t value;
  char op[12];
  char name[MECHAWAY_STR_MAX + 1];
  ArgType argType;
  bool argBool;
  int32_t argInt;
  float argFloat;
  char argStr[MECHAWAY_STR_MAX + 1];
};

namespace detail {

// A number as read: an integer (sign + 32-bit magnitude), a float, or neither.
struct Num {
  enum Kind : uint8_t { None, Int, Float, Big } kind;
  bool neg;
  uint32_t mag;
  float f;
};

// The fields a command may carry, as read from either encoding.
struct Fields {
  bool hasT, hasV, hasId, hasOp, hasPin, hasValue, hasName;
  bool tIsCmd, tBad, opLong, nameLong;
  Num v, id, pin, value;
};

enum Key : uint8_t { kOther, kT, kV, kId, kOp, kPin, kValue, kName, kArg };

inline Key keyOf(const char* k, size_t n) {
  static const char* const names[] = {"t", "v", "id", "op", "pin", "value", "name", "arg"};
  for (uint8_t i = 0; i < 8; i++)
    if (strlen(names[i]) == n && memcmp(names[i], k, n) == 0) return (Key)(i + 1);
  return kOther;
}

inline void copyStr(char* dst, size_t cap, const char* s, size_t n, bool* tooLong) {
  if (n >= cap) { if (tooLong) *tooLong = true; n = cap - 1; }
  memcpy(dst, s, n);
  dst[n] = 0;
}

// msgpack: a cursor over one frame.
class MpIn {
 public:
  MpIn(const uint8_t* p, size_t n) : p_(p), e_(p + n) {}
  bool atEnd() const { return p_ == e_; }
  bool ok() const { return ok_; }

  bool mapHeader(uint32_t& n) {
    uint8_t t;
    if (!byte(t)) return false;
    if ((t & 0xF0) == 0x80) { n = t & 0x0F; return true; }
    if (t == 0xDE) return be(2, n);
    if (t == 0xDF) return be(4, n);
    p_--;
    return false;
  }
  // A string's bytes (no copy): true if the next value is a string.
  bool str(const char*& s, size_t& n) {
    if (p_ >= e_) return bad();
    uint8_t t = *p_;
    uint32_t len;
    if ((t & 0xE0) == 0xA0) { p_++; len = t & 0x1F; }
    else if (t == 0xD9 || t == 0xDA || t == 0xDB) { p_++; if (!be(t == 0xD9 ? 1 : t == 0xDA ? 2 : 4, len)) return false; }
    else return false;
    if ((size_t)(e_ - p_) < len) return bad();
    s = (const char*)p_;
    n = len;
    p_ += len;
    return true;
  }
  // Reads any scalar into num/arg; containers and others are skipped.
  void value(Num& num, ArgType& type, bool& b, char* sbuf, size_t scap) {
    num.kind = Num::None;
    type = ArgType::Other;
    if (p_ >= e_) { bad(); return; }
    uint8_t t = *p_;
    const char* s;
    size_t n;
    if (str(s, n)) { type = ArgType::Str; if (sbuf) copyStr(sbuf, scap, s, n, nullptr); return; }
    if (!ok_) return;
    p_++;
    uint32_t u;
    if (t <= 0x7F) { setInt(num, type, false, t); return; }
    if (t >= 0xE0) { setInt(num, type, true, (uint32_t)(256 - t)); return; }
    switch (t) {
      case 0xC0: type = ArgType::Nil; return;
      case 0xC2: case 0xC3: type = ArgType::Bool; b = t == 0xC3; return;
      case 0xCC: if (be(1, u)) setInt(num, type, false, u); return;
      case 0xCD: if (be(2, u)) setInt(num, type, false, u); return;
      case 0xCE: if (be(4, u)) setInt(num, type, false, u); return;
      case 0xCF: {
        uint32_t hi;
        if (be(4, hi) && be(4, u)) { if (hi) { num.kind = Num::Big; } else setInt(num, type, false, u); }
        return;
      }
      case 0xD0: if (be(1, u)) sInt(num, type, (int32_t)(int8_t)u); return;
      case 0xD1: if (be(2, u)) sInt(num, type, (int32_t)(int16_t)u); return;
      case 0xD2: if (be(4, u)) sInt(num, type, (int32_t)u); return;
      case 0xD3: {
        uint32_t hi;
        if (be(4, hi) && be(4, u)) {
          if (hi == 0 && !(u & 0x80000000u)) setInt(num, type, false, u);
          else if (hi == 0xFFFFFFFFu && (u & 0x80000000u)) sInt(num, type, (int32_t)u);
          else num.kind = Num::Big;
        }
        return;
      }
      case 0xCA: {
        if (!be(4, u)) return;
        float f;
        memcpy(&f, &u, 4);
        setFloat(num, type, f);
        return;
      }
      case 0xCB: {
        uint32_t hi;
        if (be(4, hi) && be(4, u)) setFloat(num, type, f64to32(hi, u));
        return;
      }
      default:
        p_--;
        skip(0);
        return;
    }
  }
  // Skips one value of any type (containers up to 8 deep).
  void skip(uint8_t depth) {
    if (depth > 8 || p_ >= e_) { bad(); return; }
    uint8_t t = *p_++;
    uint32_t n = 0;
    if (t <= 0x7F || t >= 0xE0 || t == 0xC0 || t == 0xC2 || t == 0xC3) return;
    if ((t & 0xE0) == 0xA0) { adv(t & 0x1F); return; }
    if ((t & 0xF0) == 0x90) { items(t & 0x0F, depth); return; }
    if ((t & 0xF0) == 0x80) { items(2u * (t & 0x0F), depth); return; }
    switch (t) {
      case 0xC4: case 0xD9: if (be(1, n)) adv(n); return;
      case 0xC5: case 0xDA: if (be(2, n)) adv(n); return;
      case 0xC6: case 0xDB: if (be(4, n)) adv(n); return;
      case 0xC7: if (be(1, n)) adv(n + 1); return;
      case 0xC8: if (be(2, n)) adv(n + 1); return;
      case 0xC9: if (be(4, n)) adv(n + 1); return;
      case 0xCA: adv(4); return;
      case 0xCB: adv(8); return;
      case 0xCC: case 0xD0: adv(1); return;
      case 0xCD: case 0xD1: adv(2); return;
      case 0xCE: case 0xD2: adv(4); return;
      case 0xCF: case 0xD3: adv(8); return;
      case 0xD4: adv(2); return;
      case 0xD5: adv(3); return;
      case 0xD6: adv(5); return;
      case 0xD7: adv(9); return;
      case 0xD8: adv(17); return;
      case 0xDC: if (be(2, n)) items(n, depth); return;
      case 0xDD: if (be(4, n)) items(n, depth); return;
      case 0xDE: if (be(2, n)) items(2 * n, depth); return;
      case 0xDF: if (be(4, n)) items(2 * n, depth); return;
      default: bad(); return;  // 0xC1: never used
    }
  }

 private:
  static void setInt(Num& num, ArgType& type, bool neg, uint32_t mag) {
    num.kind = Num::Int; num.neg = neg && mag; num.mag = mag; type = ArgType::Int;
  }
  static void sInt(Num& num, ArgType& type, int32_t v) {
    if (v < 0) setInt(num, type, true, (uint32_t)(-(v + 1)) + 1u); else setInt(num, type, false, (uint32_t)v);
  }
  static void setFloat(Num& num, ArgType& type, float f) { num.kind = Num::Float; num.f = f; type = ArgType::Float; }
  static float f64to32(uint32_t hi, uint32_t lo) {
    uint32_t sign = hi & 0x80000000u;
    int32_t exp = (int32_t)((hi >> 20) & 0x7FF);
    uint32_t bits;
    if (exp == 0x7FF) bits = sign | 0x7F800000u | ((hi & 0xFFFFF) || lo ? 0x400000u : 0);
    else if (exp - 1023 > 127) bits = sign | 0x7F800000u;
    else if (exp - 1023 < -126) bits = sign;  // subnormals flush to zero
    else bits = sign | ((uint32_t)(exp - 1023 + 127) << 23) | ((hi & 0xFFFFF) << 3) | (lo >> 29);
    float f;
    memcpy(&f, &bits, 4);
    return f;
  }
  bool bad() { ok_ = false; p_ = e_; return false; }
  bool byte(uint8_t& b) { if (p_ >= e_) return bad(); b = *p_++; return true; }
  bool be(uint8_t n, uint32_t& v) {
    if ((size_t)(e_ - p_) < n) return bad();
    v = 0;
    while (n--) v = (v << 8) | *p_++;
    return true;
  }
  void adv(uint32_t n) { if ((size_t)(e_ - p_) < n) bad(); else p_ += n; }
  void items(uint32_t n, uint8_t depth) { while (n-- && ok_) skip((uint8_t)(depth + 1)); }

  const uint8_t* p_;
  const uint8_t* e_;
  bool ok_ = true;
};

// JSON: a cursor over one frame (RFC 8259; \u escapes outside ASCII become '?').
class JsonIn {
 public:
  JsonIn(const uint8_t* p, size_t n) : p_(p), e_(p + n) {}
  bool ok() const { return ok_; }
  void ws() { while (p_ < e_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\r' || *p_ == '\n')) p_++; }
  bool atEnd() { ws(); return p_ == e_; }
  bool peek(char c) { ws(); return p_ < e_ && *p_ == (uint8_t)c; }
  bool eat(char c) { if (peek(c)) { p_++; return true; } return false; }
  bool expect(char c) { if (eat(c)) return true; return bad(); }

  // A string into buf (cut at cap - 1, *cut set); false if the next value is no string.
  bool str(char* buf, size_t cap, bool* cut) {
    if (!peek('"')) return false;
    p_++;
    size_t n = 0;
    while (p_ < e_) {
      uint8_t c = *p_++;
      if (c == '"') { if (buf) buf[n < cap ? n : cap - 1] = 0; return true; }
      if (c < 0x20) return bad();
      if (c == '\\') {
        if (p_ >= e_) return bad();
        c = *p_++;
        switch (c) {
          case '"': case '\\': case '/': break;
          case 'b': c = '\b'; break;
          case 'f': c = '\f'; break;
          case 'n': c = '\n'; break;
          case 'r': c = '\r'; break;
          case 't': c = '\t'; break;
          case 'u': {
            uint32_t u = 0;
            for (uint8_t i = 0; i < 4; i++) {
              if (p_ >= e_) return bad();
              uint8_t h = *p_++;
              int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
              if (d < 0) return bad();
              u = u * 16 + (uint32_t)d;
            }
            c = u < 0x80 ? (uint8_t)u : (uint8_t)'?';
            break;
          }
          default: return bad();
        }
      }
      if (buf) {
        if (n + 1 < cap) buf[n++] = (char)c;
        else if (cut) *cut = true;
      }
    }
    return bad();
  }
  // Any value: numbers into num, strings into sbuf, containers skipped.
  void value(Num& num, ArgType& type, bool& b, char* sbuf, size_t scap, uint8_t depth = 0) {
    num.kind = Num::None;
    type = ArgType::Other;
    ws();
    if (p_ >= e_) { bad(); return; }
    uint8_t c = *p_;
    if (c == '"') { type = ArgType::Str; str(sbuf, scap, nullptr); return; }
    if (c == '{' || c == '[') { container(depth); return; }
    if (lit("true")) { type = ArgType::Bool; b = true; return; }
    if (lit("false")) { type = ArgType::Bool; b = false; return; }
    if (lit("null")) { type = ArgType::Nil; return; }
    number(num);
    if (num.kind == Num::Int) type = ArgType::Int;
    else if (num.kind == Num::Float) type = ArgType::Float;
  }

 private:
  bool bad() { ok_ = false; p_ = e_; return false; }
  bool lit(const char* s) {
    size_t n = strlen(s);
    if ((size_t)(e_ - p_) >= n && memcmp(p_, s, n) == 0) { p_ += n; return true; }
    return false;
  }
  void container(uint8_t depth) {
    if (depth > 8) { bad(); return; }
    bool map = *p_++ == '{';
    Num num;
    ArgType t;
    bool b;
    if (eat(map ? '}' : ']')) return;
    do {
      if (map) {
        if (!str(nullptr, 0, nullptr)) { bad(); return; }
        if (!expect(':')) return;
      }
      value(num, t, b, nullptr, 0, (uint8_t)(depth + 1));
      if (!ok_) return;
    } while (eat(','));
    expect(map ? '}' : ']');
  }
  void number(Num& num) {
    bool neg = false, big = false, isFloat = false;
    if (p_ < e_ && *p_ == '-') { neg = true; p_++; }
    if (p_ >= e_ || *p_ < '0' || *p_ > '9') { bad(); return; }
    if (*p_ == '0' && p_ + 1 < e_ && p_[1] >= '0' && p_[1] <= '9') { bad(); return; }  // no leading zeros
    uint32_t mag = 0;
    float f = 0;
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9') {
      uint32_t d = (uint32_t)(*p_++ - '0');
      if (mag > (0xFFFFFFFFu - d) / 10) big = true; else mag = mag * 10 + d;
      f = f * 10 + (float)d;
    }
    if (p_ < e_ && *p_ == '.') {
      isFloat = true;
      p_++;
      if (p_ >= e_ || *p_ < '0' || *p_ > '9') { bad(); return; }
      float scale = 0.1f;
      while (p_ < e_ && *p_ >= '0' && *p_ <= '9') { f += scale * (float)(*p_++ - '0'); scale *= 0.1f; }
    }
    if (p_ < e_ && (*p_ == 'e' || *p_ == 'E')) {
      isFloat = true;
      p_++;
      bool eneg = false;
      if (p_ < e_ && (*p_ == '+' || *p_ == '-')) eneg = *p_++ == '-';
      if (p_ >= e_ || *p_ < '0' || *p_ > '9') { bad(); return; }
      int ex = 0;
      while (p_ < e_ && *p_ >= '0' && *p_ <= '9') { if (ex < 100) ex = ex * 10 + (*p_ - '0'); p_++; }
      while (ex--) f = eneg ? f / 10 : f * 10;
    }
    if (isFloat) { num.kind = Num::Float; num.f = neg ? -f : f; }
    else if (big) num.kind = Num::Big;
    else { num.kind = Num::Int; num.neg = neg && mag; num.mag = mag; }
  }

  const uint8_t* p_;
  const uint8_t* e_;
  bool ok_ = true;
};

inline bool inRange(const Num& n, uint32_t hi) { return n.kind == Num::Int && !n.neg && n.mag <= hi; }

// The command's checks (PROTOCOL.md section 2), shared by both encodings.
inline const char* check(const Fields& f, Command& c) {
  if (f.hasV && !(f.v.kind == Num::Int)) return "schema";
  if (f.hasV && (f.v.neg || f.v.mag != kProtocolVersion)) return "version";
  if (!f.hasT || f.tBad || !f.tIsCmd) return "schema";
  if (!f.hasId || !inRange(f.id, 0xFFFFFFFFu)) return "schema";
  c.id = f.id.mag;
  if (!f.hasOp || f.opLong || !c.op[0]) return f.opLong ? "bad_op" : "schema";
  bool pin = strcmp(c.op, "pin") == 0, pwm = strcmp(c.op, "pwm") == 0;
  if (pin || pwm) {
    if (!f.hasPin || !inRange(f.pin, 255)) return "bad_pin";
    if (!f.hasValue || !inRange(f.value, pin ? 1 : 255)) return "bad_value";
    c.pin = (int32_t)f.pin.mag;
    c.value = (int32_t)f.value.mag;
    return nullptr;
  }
  if (strcmp(c.op, "custom") == 0) {
    if (!f.hasName || f.nameLong || !c.name[0]) return "bad_value";
    return nullptr;
  }
  if (strcmp(c.op, "hello") == 0) return nullptr;
  return "bad_op";
}

}  // namespace detail

// Reads one frame's content as a host command. nullptr if valid, else the error code
// to answer with (c.id holds the command's id when it could be read: check hasId).
inline const char* parseCommand(Framing framing, const uint8_t* data, size_t n, Command& c, bool& hasId) {
  using namespace detail;
  memset(&c, 0, sizeof c);
  Fields f;
  memset(&f, 0, sizeof f);
  char key[8];
  char tbuf[8];
  ArgType ignore;
  bool b;
  hasId = false;
  if (framing == Framing::Line) {
    JsonIn in(data, n);
    if (!in.expect('{')) return "json";
    if (!in.eat('}')) {
      do {
        bool cut = false;
        if (!in.str(key, sizeof key, &cut)) return "json";
        if (!in.expect(':')) return "json";
        Key k = cut ? kOther : keyOf(key, strlen(key));
        switch (k) {
          case kT: {
            f.hasT = true;
            bool tcut = false;
            if (in.str(tbuf, sizeof tbuf, &tcut)) f.tIsCmd = !tcut && strcmp(tbuf, "cmd") == 0;
            else { f.tBad = true; Num x; in.value(x, ignore, b, nullptr, 0); }
          } break;
          case kOp: f.hasOp = true; if (!in.str(c.op, sizeof c.op, &f.opLong)) { c.op[0] = 0; Num x; in.value(x, ignore, b, nullptr, 0); } break;
          case kName: f.hasName = true; if (!in.str(c.name, sizeof c.name, &f.nameLong)) { c.name[0] = 0; Num x; in.value(x, ignore, b, nullptr, 0); } break;
          case kV: f.hasV = true; in.value(f.v, ignore, b, nullptr, 0); break;
          case kId: f.hasId = true; in.value(f.id, ignore, b, nullptr, 0); break;
          case kPin: f.hasPin = true; in.value(f.pin, ignore, b, nullptr, 0); break;
          case kValue: f.hasValue = true; in.value(f.value, ignore, b, nullptr, 0); break;
          case kArg: {
            Num x;
            in.value(x, c.argType, c.argBool, c.argStr, sizeof c.argStr);
            if (x.kind == Num::Int) c.argInt = x.neg ? -(int32_t)(x.mag - 1) - 1 : (int32_t)x.mag;
            if (x.kind == Num::Float) c.argFloat = x.f;
          } break;
          default: { Num x; in.value(x, ignore, b, nullptr, 0); } break;
        }
        if (!in.ok()) return "json";
      } while (in.eat(','));
      if (!in.expect('}')) return "json";
    }
    if (!in.atEnd()) return "json";
  } else {
    MpIn in(data, n);
    uint32_t count;
    if (!in.mapHeader(count)) { in.skip(0); return in.ok() && in.atEnd() ? "schema" : "msgpack"; }
    bool keysOk = true;
    while (count-- && in.ok()) {
      const char* ks;
      size_t kn;
      Key k = kOther;
      if (in.str(ks, kn)) k = keyOf(ks, kn);
      else { keysOk = false; in.skip(0); }
      if (!in.ok()) break;
      const char* s;
      size_t sn;
      switch (k) {
        case kT: f.hasT = true;
          if (in.str(s, sn)) f.tIsCmd = sn == 3 && memcmp(s, "cmd", 3) == 0;
          else { f.tBad = true; in.skip(0); }
          break;
        case kOp: f.hasOp = true;
          if (in.str(s, sn)) copyStr(c.op, sizeof c.op, s, sn, &f.opLong); else in.skip(0);
          break;
        case kName: f.hasName = true;
          if (in.str(s, sn)) copyStr(c.name, sizeof c.name, s, sn, &f.nameLong); else in.skip(0);
          break;
        case kV: f.hasV = true; in.value(f.v, ignore, b, nullptr, 0); break;
        case kId: f.hasId = true; in.value(f.id, ignore, b, nullptr, 0); break;
        case kPin: f.hasPin = true; in.value(f.pin, ignore, b, nullptr, 0); break;
        case kValue: f.hasValue = true; in.value(f.value, ignore, b, nullptr, 0); break;
        case kArg: {
          Num x;
          in.value(x, c.argType, c.argBool, c.argStr, sizeof c.argStr);
          if (x.kind == Num::Int) c.argInt = x.neg ? -(int32_t)(x.mag - 1) - 1 : (int32_t)x.mag;
          if (x.kind == Num::Float) c.argFloat = x.f;
        } break;
        default: in.skip(0); break;
      }
    }
    if (!in.ok() || !in.atEnd()) return "msgpack";
    if (!keysOk) return "schema";
  }
  const char* code = check(f, c);
  hasId = f.hasId && inRange(f.id, 0xFFFFFFFFu);
  if (hasId) c.id = f.id.mag;
  return code;
}

// What a Bridge does with the outside world (any hook but write may be null: the
// device then answers that op with bad_op and leaves it out of hello's caps).
struct Hooks {
  void (*write)(const uint8_t* data, size_t n);
  bool (*pin)(uint8_t pin, uint8_t value);  // false: no such pin (error bad_pin)
  bool (*pwm)(uint8_t pin, uint8_t value);  // false: no PWM on that pin
  // a custom command: nullptr when done, else the error code to answer with
  const char* (*custom)(const Command& cmd);
};

// The device side of the protocol: feed it received bytes, call hello/reading/heartbeat;
// it answers commands through the hooks. RX: largest frame received, TX: largest sent.
// FRAMING is a template argument so that the other framing's code is not linked in.
template <Framing FRAMING, size_t RX = 96, size_t TX = 96>
class Bridge {
 public:
  Bridge(const Hooks& hooks, const char* device, const char* fw)
      : hooks_(hooks), device_(device), fw_(fw), framer_(FRAMING),
        w_(tx_, TX, FRAMING == Framing::Line) {}

  static constexpr Framing framing() { return FRAMING; }
  // True once a valid command arrived (hello need not be repeated any more).
  bool heard() const { return heard_; }
  uint32_t framesBad() const { return bad_; }

  // After a reset: a delimiter ending whatever the line carried, then hello.
  void begin() {
    if (framing() == Framing::Cobs) { uint8_t z = 0; hooks_.write(&z, 1); }
    else { uint8_t nl = '\n'; hooks_.write(&nl, 1); }
    hello();
  }

  void push(uint8_t byte) {
    Frame f;
    if (!framer_.push(byte, f)) return;
    if (f.err != Err::None) {
      bad_++;
      error(nullptr, errName(f.err), nullptr);
      return;
    }
    handle(f.data, f.size);
  }

  void hello() {
    uint8_t caps = (hooks_.pin ? 1 : 0) + (hooks_.pwm ? 1 : 0) + (hooks_.custom ? 1 : 0);
    start(fw_ ? 6 : 5);
    w_.key("v"); w_.u32(kProtocolVersion);
    w_.key("t"); w_.str("hello");
    w_.key("device"); w_.str(device_);
    if (fw_) { w_.key("fw"); w_.str(fw_); }
    w_.key("caps"); w_.beginArray(caps);
    if (hooks_.pin) w_.str("pin");
    if (hooks_.pwm) w_.str("pwm");
    if (hooks_.custom) w_.str("custom");
    w_.end();
    w_.key("max_frame"); w_.u32(RX);
    send();
  }

  // Starts {"t":"reading","seq":N,"values":{ ... : add n key/value pairs to the
  // returned writer, then call send().
  Writer& reading(uint8_t n) {
    start(3);
    w_.key("t"); w_.str("reading");
    w_.key("seq"); w_.u32(seq_++);
    w_.key("values"); w_.beginMap(n);
    return w_;
  }
  void setSeq(uint32_t seq) { seq_ = seq; }

  void heartbeat(uint32_t uptimeMs) {
    start(2);
    w_.key("t"); w_.str("heartbeat");
    w_.key("uptime_ms"); w_.u32(uptimeMs);
    send();
  }
  void ack(uint32_t id) {
    start(2);
    w_.key("t"); w_.str("ack");
    w_.key("id"); w_.u32(id);
    send();
  }
  // An error; id may be null (not about a command), msg may be null.
  void error(const uint32_t* id, const char* code, const char* msg) {
    start((uint8_t)(2 + (id ? 1 : 0) + (msg ? 1 : 0)));
    w_.key("t"); w_.str("error");
    if (id) { w_.key("id"); w_.u32(*id); }
    w_.key("code"); w_.str(code);
    if (msg) { w_.key("msg"); w_.str(msg); }
    send();
  }

  // Closes the message being written and sends it as one frame. A message that did
  // not fit TX is not sent (a partial frame would only be a framing error).
  bool send() {
    w_.endAll();
    if (w_.overflow()) return false;
    size_t n = w_.size();
    if (framing() == Framing::Line) {
      tx_[n] = '\n';
      hooks_.write(tx_, n + 1);
    } else {
      uint16_t crc = crc16(tx_, n);
      tx_[n] = (uint8_t)(crc >> 8);
      tx_[n + 1] = (uint8_t)crc;
      cobsWrite(tx_, n + 2, [this](const uint8_t* d, size_t k) { if (k) hooks_.write(d, k); });
      uint8_t z = 0;
      hooks_.write(&z, 1);
    }
    return true;
  }

 private:
  void start(uint8_t fields) {
    w_.clear();
    w_.beginMap(fields);
  }

  void handle(const uint8_t* data, size_t n) {
    Command& c = cmd_;
    bool hasId;
    const char* code = parseCommand(framing(), data, n, c, hasId);
    if (!code) {
      heard_ = true;
      if (strcmp(c.op, "pin") == 0) code = hooks_.pin ? (hooks_.pin((uint8_t)c.pin, (uint8_t)c.value) ? nullptr : "bad_pin") : "bad_op";
      else if (strcmp(c.op, "pwm") == 0) code = hooks_.pwm ? (hooks_.pwm((uint8_t)c.pin, (uint8_t)c.value) ? nullptr : "bad_pin") : "bad_op";
      else if (strcmp(c.op, "custom") == 0) code = hooks_.custom ? hooks_.custom(c) : "bad_op";
      else if (strcmp(c.op, "hello") == 0) hello();
    }
    if (code) { bad_++; error(hasId ? &c.id : nullptr, code, nullptr); }
    else ack(c.id);
  }

  Hooks hooks_;
  const char* device_;
  const char* fw_;
  Framer<RX> framer_;
  uint8_t tx_[TX + 2];  // + room for the CRC or the newline
  Writer w_;
  Command cmd_;
  uint32_t seq_ = 0;
  uint32_t bad_ = 0;
  bool heard_ = false;
};

}  // namespace mechaway
