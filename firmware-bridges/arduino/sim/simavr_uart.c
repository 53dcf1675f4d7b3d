/* Runs an ATmega328P firmware in simavr with its UART on a pty, at real-time speed.
 *
 *   simavr_uart firmware.elf
 *
 * Prints "PTY /dev/pts/N" once the pty exists (open that, in raw mode, like a USB
 * serial port). Pin 13 (PB5) is wired to A0: A0 reads 3000 mV while pin 13 is high,
 * 1000 mV while it is low, so a command that sets the pin shows in the readings.
 * Bytes the firmware sends while no one has the pty open are lost, as after a reset.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "avr_adc.h"
#include "avr_ioport.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "uart_pty.h"

static avr_t *avr;
static uart_pty_t pty;

static void pin13_changed(struct avr_irq_t *irq, uint32_t value, void *param) {
  (void)irq;
  (void)param;
  avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0), value ? 3000 : 1000);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s firmware.elf\n", argv[0]);
    return 2;
  }
  elf_firmware_t f;
  memset(&f, 0, sizeof f);
  if (elf_read_firmware(argv[1], &f) != 0) {
    fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  avr = avr_make_mcu_by_name("atmega328p");
  if (!avr) return 1;
  avr_init(avr);
  avr->frequency = 16000000;
  avr->vcc = avr->avcc = avr->aref = 5000;
  avr_load_firmware(avr, &f);
  avr->frequency = 16000000;

  avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 5), pin13_changed, NULL);
  avr_raise_irq(avr_io_getirq(avr, AVR_IOCTL_ADC_GETIRQ, ADC_IRQ_ADC0), 1000);

  uart_pty_init(avr, &pty);
  uart_pty_connect(&pty, '0');
  printf("PTY %s\n", pty.port[0].slavename);
  fflush(stdout);

  /* simavr runs as fast as it can; keep simulated time at most 2 ms ahead of the clock */
  double start = now_s();
  for (unsigned long i = 0;; i++) {
    int state = avr_run(avr);
    if (state == cpu_Done || state == cpu_Crashed) {
      fprintf(stderr, "firmware stopped (state %d)\n", state);
      return 1;
    }
    if ((i & 1023) == 0) {
      double ahead = (double)avr->cycle / avr->frequency - (now_s() - start);
      if (ahead > 0.002) {
        struct timespec ts = {0, (long)(ahead * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
      }
    }
  }
}
