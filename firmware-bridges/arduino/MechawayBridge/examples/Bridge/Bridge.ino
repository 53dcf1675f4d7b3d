// A mechaway bridge: says hello, sends readings (A0, pin 13, a counter) and heartbeats,
// obeys pin / PWM / custom commands with acks. Works on an Arduino Uno (ATmega328P,
// tested in simavr) and on an ESP32 (set SERIAL_BAUD and pins to taste).
//
// Framing: line (one JSON object per line) unless built with -DBRIDGE_COBS=1.
// Custom commands: "count" (arg: an integer) sets the counter the readings carry.
#include <Arduino.h>
#include <MechawayBridge.h>
#if defined(__AVR__)
#include <avr/sleep.h>
#endif

#ifndef SERIAL_BAUD
#define SERIAL_BAUD 115200
#endif
#ifndef READING_MS
#define READING_MS 1000
#endif
#ifndef HEARTBEAT_MS
#define HEARTBEAT_MS 5000
#endif
#define HELLO_MS 10000  // hello again until a command shows that someone listens

#if BRIDGE_COBS
static constexpr mechaway::Framing kFraming = mechaway::Framing::Cobs;
#else
static constexpr mechaway::Framing kFraming = mechaway::Framing::Line;
#endif

static uint32_t counter = 0;

static void serialWrite(const uint8_t* data, size_t n) { Serial.write(data, n); }

static bool setPin(uint8_t pin, uint8_t value) {
  if (pin < 2 || pin >= NUM_DIGITAL_PINS) return false;  // 0 and 1 carry the serial port
  pinMode(pin, OUTPUT);
  digitalWrite(pin, value ? HIGH : LOW);
  return true;
}

static bool setPwm(uint8_t pin, uint8_t value) {
#ifdef digitalPinHasPWM
  if (pin >= NUM_DIGITAL_PINS || !digitalPinHasPWM(pin)) return false;
#else
  if (pin < 2 || pin >= NUM_DIGITAL_PINS) return false;
#endif
  pinMode(pin, OUTPUT);
  analogWrite(pin, value);
  return true;
}

static const char* custom(const mechaway::Command& cmd) {
  if (strcmp(cmd.name, "count") == 0) {
    if (cmd.argType != mechaway::ArgType::Int || cmd.argInt < 0) return "bad_value";
    counter = (uint32_t)cmd.argInt;
    return nullptr;
  }
  return "bad_value";
}

static const mechaway::Hooks hooks = {serialWrite, setPin, setPwm, custom};
static mechaway::Bridge<kFraming, 96, 96> bridge(hooks, "uno-1", "0.1.0");
static uint32_t lastReading, lastBeat, lastHello;

void setup() {
  Serial.begin(SERIAL_BAUD);
  bridge.begin();
  lastReading = lastBeat = lastHello = millis();
}

void loop() {
  while (Serial.available() > 0) bridge.push((uint8_t)Serial.read());
  uint32_t now = millis();
  if (now - lastReading >= READING_MS) {
    lastReading = now;
    mechaway::Writer& w = bridge.reading(3);
    w.key("a0"); w.u32((uint32_t)analogRead(A0));
    w.key("d13"); w.u32((uint32_t)digitalRead(13));
    w.key("count"); w.u32(counter++);
    bridge.send();
  }
  if (now - lastBeat >= HEARTBEAT_MS) {
    lastBeat = now;
    bridge.heartbeat(now);
  }
  if (!bridge.heard() && now - lastHello >= HELLO_MS) {
    lastHello = now;
    bridge.hello();
  }
#if defined(__AVR__)
  set_sleep_mode(SLEEP_MODE_IDLE);  // the next interrupt (timer tick, a byte) wakes us
  sleep_mode();
#endif
}
