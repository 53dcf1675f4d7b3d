// Drives MechawayBridge.h on the host for tests/firmware/test_cpp_bridge.py, one request
// per stdin line, one answer line each ("-" for an empty hex string):
//   K <hex>                   -> CRC-16 in decimal
//   D <line|cobs> <max> <hex> -> framer output: "F:<hex>" / "E:<code>" items, or "."
//   C <line|cobs> <hex>       -> a frame read as a command: "OK id op pin value name arg"
//                                (name and string arg in hex) or "ERR <code> <id|->"
//   E <name> <line|cobs>      -> the named message of test-vectors.json's "encode", as
//                                the library writes it (hex of the wire bytes)
//   B <line|cobs> <hex>       -> bytes pushed into a Bridge: "W:<hex written> P:pin=value ..."
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "MechawayBridge.h"

using namespace mechaway;

static std::vector<uint8_t> unhex(const char* s) {
  std::vector<uint8_t> out;
  if (strcmp(s, "-") == 0) return out;
  for (size_t i = 0; s[i] && s[i + 1]; i += 2) {
    char b[3] = {s[i], s[i + 1], 0};
    out.push_back((uint8_t)strtoul(b, nullptr, 16));
  }
  return out;
}

static std::string hex(const uint8_t* d, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) { s += digits[d[i] >> 4]; s += digits[d[i] & 15]; }
  return s;
}

static Framing framingOf(const char* s) { return strcmp(s, "cobs") == 0 ? Framing::Cobs : Framing::Line; }

static std::string wire;
static std::string events;
static void recordWrite(const uint8_t* d, size_t n) { wire += hex(d, n); }
static bool recordPin(uint8_t pin, uint8_t value) {
  if (pin > 19) return false;
  events += " P:" + std::to_string(pin) + "=" + std::to_string(value);
  return true;
}
static bool recordPwm(uint8_t pin, uint8_t value) {
  if (pin != 3 && pin != 5 && pin != 6 && pin != 9 && pin != 10 && pin != 11) return false;
  events += " PWM:" + std::to_string(pin) + "=" + std::to_string(value);
  return true;
}
static const char* recordCustom(const Command& c) {
  events += std::string(" CUSTOM:") + c.name;
  return strcmp(c.name, "blink") == 0 ? nullptr : "bad_value";
}

static const Hooks kHooks = {recordWrite, recordPin, recordPwm, recordCustom};

template <Framing F>
static void encodeDevice(const char* name) {
  Bridge<F, 96, 400> bridge(kHooks, "uno-1", "0.1.0");
  if (!strcmp(name, "hello")) bridge.hello();
  else if (!strcmp(name, "reading")) {
    bridge.setSeq(1);
    Writer& w = bridge.reading(2);
    w.key("a0"); w.u32(512);
    w.key("count"); w.u32(1);
    bridge.send();
  } else if (!strcmp(name, "reading_float")) {
    bridge.setSeq(5);
    Writer& w = bridge.reading(2);
    w.key("temp"); w.f32(21.5f);
    w.key("a0"); w.i32(-12);
    bridge.send();
  } else if (!strcmp(name, "ack")) bridge.ack(7);
  else if (!strcmp(name, "error")) { uint32_t id = 8; bridge.error(&id, "bad_pin", "pin 99"); }
  else if (!strcmp(name, "heartbeat")) bridge.heartbeat(120000);
  else wire = "unknown";
}

static void encodeNamed(const char* name, Framing framing) {
  wire.clear();
  if (strncmp(name, "cmd_", 4) != 0) {
    if (framing == Framing::Line) encodeDevice<Framing::Line>(name);
    else encodeDevice<Framing::Cobs>(name);
  } else {
    // the host's messages, written with the bare Writer
    uint8_t buf[128];
    Writer w(buf, sizeof buf, framing == Framing::Line);
    const char* op = name + 4;
    bool pinLike = !strcmp(op, "pin") || !strcmp(op, "pwm");
    w.beginMap(pinLike ? 6 : !strcmp(op, "custom") ? 6 : 4);
    w.key("v"); w.u32(1);
    w.key("t"); w.str("cmd");
    w.key("id"); w.u32(!strcmp(op, "pin") ? 1 : !strcmp(op, "pwm") ? 2 : !strcmp(op, "custom") ? 3 : 4);
    w.key("op"); w.str(op);
    if (!strcmp(op, "pin")) { w.key("pin"); w.u32(13); w.key("value"); w.u32(1); }
    if (!strcmp(op, "pwm")) { w.key("pin"); w.u32(9); w.key("value"); w.u32(128); }
    if (!strcmp(op, "custom")) { w.key("name"); w.str("blink"); w.key("arg"); w.u32(3); }
    w.endAll();
    if (framing == Framing::Line) { buf[w.size()] = '\n'; wire = hex(buf, w.size() + 1); }
    else {
      uint16_t crc = crc16(buf, w.size());
      buf[w.size()] = (uint8_t)(crc >> 8);
      buf[w.size() + 1] = (uint8_t)crc;
      cobsWrite(buf, w.size() + 2, [](const uint8_t* d, size_t n) { wire += hex(d, n); });
      wire += "00";
    }
  }
  printf("%s\n", wire.c_str());
}

template <Framing F>
static void pushAll(const std::vector<uint8_t>& data) {
  Bridge<F, 96, 96> bridge(kHooks, "host", nullptr);
  for (uint8_t b : data) bridge.push(b);
}

int main() {
  static char line[1 << 16];
  static Framer<4096> framer;
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    char* argv[5] = {nullptr};
    int argc = 0;
    for (char* tok = strtok(line, " "); tok && argc < 5; tok = strtok(nullptr, " ")) argv[argc++] = tok;
    if (argc == 0) continue;
    if (!strcmp(argv[0], "K") && argc == 2) {
      std::vector<uint8_t> d = unhex(argv[1]);
      printf("%u\n", crc16(d.data(), d.size()));
    } else if (!strcmp(argv[0], "D") && argc == 4) {
      framer.setFraming(framingOf(argv[1]));
      framer.setLimit((size_t)atoi(argv[2]));
      std::vector<uint8_t> d = unhex(argv[3]);
      std::string out;
      Frame f;
      for (uint8_t b : d) {
        if (!framer.push(b, f)) continue;
        if (!out.empty()) out += ' ';
        out += f.err == Err::None ? "F:" + hex(f.data, f.size) : std::string("E:") + errName(f.err);
      }
      printf("%s\n", out.empty() ? "." : out.c_str());
    } else if (!strcmp(argv[0], "C") && argc == 3) {
      std::vector<uint8_t> d = unhex(argv[2]);
      Command c;
      bool hasId;
      const char* code = parseCommand(framingOf(argv[1]), d.data(), d.size(), c, hasId);
      if (code) {
        printf("ERR %s %s\n", code, hasId ? std::to_string(c.id).c_str() : "-");
      } else {
        std::string arg = "none";
        switch (c.argType) {
          case ArgType::Nil: arg = "nil"; break;
          case ArgType::Bool: arg = c.argBool ? "true" : "false"; break;
          case ArgType::Int: arg = "int:" + std::to_string(c.argInt); break;
          case ArgType::Float: arg = "float:" + std::to_string(c.argFloat); break;
          case ArgType::Str: arg = "str:" + hex((const uint8_t*)c.argStr, strlen(c.argStr)); break;
          case ArgType::Other: arg = "other"; break;
          case ArgType::None: break;
        }
        std::string name = c.name[0] ? hex((const uint8_t*)c.name, strlen(c.name)) : "-";
        printf("OK %u %s %d %d %s %s\n", c.id, c.op, c.pin, c.value, name.c_str(), arg.c_str());
      }
    } else if (!strcmp(argv[0], "E") && argc == 3) {
      encodeNamed(argv[1], framingOf(argv[2]));
    } else if (!strcmp(argv[0], "B") && argc == 3) {
      wire.clear();
      events.clear();
      std::vector<uint8_t> d = unhex(argv[2]);
      if (framingOf(argv[1]) == Framing::Line) pushAll<Framing::Line>(d);
      else pushAll<Framing::Cobs>(d);
      printf("W:%s%s\n", wire.empty() ? "-" : wire.c_str(), events.c_str());
    } else {
      printf("?\n");
    }
    fflush(stdout);
  }
  return 0;
}
