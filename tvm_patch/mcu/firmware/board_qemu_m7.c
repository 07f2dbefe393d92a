/* QEMU mps2-an500 (Cortex-M7): CMSDK APB UART0 as the serial port. The DWT cycle counter is
 * not emulated and reads 0; the host counts instructions with a TCG plugin instead. */
#include "board.h"

#define REG(addr) (*(volatile uint32_t*)(addr))
#define UART0_DATA REG(0x40004000u)
#define UART0_STATE REG(0x40004004u) /* bit 0: TX full, bit 1: RX full */
#define UART0_CTRL REG(0x40004008u)  /* bit 0: TX enable, bit 1: RX enable */
#define UART0_BAUDDIV REG(0x40004010u)
#define DEMCR REG(0xE000EDFCu)
#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)

void board_init(void) {
  UART0_BAUDDIV = 16u; /* the smallest divisor the UART accepts */
  UART0_CTRL = 3u;
  DEMCR |= 1u << 24;
  DWT_CYCCNT = 0u;
  DWT_CTRL |= 1u;
}

void board_putc(uint8_t c) {
  while (UART0_STATE & 1u) {
  }
  UART0_DATA = c;
}

uint8_t board_getc(void) {
  while (!(UART0_STATE & 2u)) {
  }
  return (uint8_t)UART0_DATA;
}

uint32_t board_cycles(void) { return DWT_CYCCNT; }
