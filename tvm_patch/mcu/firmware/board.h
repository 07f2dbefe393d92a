/* What the protocol server needs from a board: one blocking serial port and a cycle counter. */
#ifndef TVMP_BOARD_H
#define TVMP_BOARD_H

#include <stdint.h>

void board_init(void);        /* clocks, caches, serial port, cycle counter */
void board_putc(uint8_t c);   /* blocking write of one byte to the host */
uint8_t board_getc(void);     /* blocking read of one byte from the host */
uint32_t board_cycles(void);  /* free-running core cycle counter; reads 0 where not emulated */

#endif
