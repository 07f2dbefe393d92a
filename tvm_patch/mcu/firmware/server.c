/* The protocol server: the host sets inputs, runs the model and reads outputs and counters
 * over the serial port. Every frame, both ways:
 *   'T' 'P' | command (1 byte) | payload length (u32) | payload | CRC-32 of command, length
 *   and payload (u32)
 * all little-endian. A reply carries command | 0x80 and starts with a status byte. */
#include <stddef.h>
#include <stdint.h>

#include "board.h"
#include "tvmp_model.h"

#define PROTOCOL_VERSION 1u
enum { OK = 0, BAD_CRC = 1, BAD_ARGS = 2, UNKNOWN = 3, FAULT = 0xFF };
enum { INFO = 'I', WRITE = 'W', RUN = 'R', READ = 'O' };
#define STACK_PAINT 0xA5C3A5C3u

extern uint32_t _sstack[], _estack[];
static uint32_t marks[TVMP_LAYERS + 1u];
static uint32_t crc;

__attribute__((noinline)) void tvmp_mark(uint32_t layer) {
  marks[layer] = board_cycles();
  __asm__ volatile("" ::: "memory");
}

static void crc_byte(uint8_t b) {
  crc ^= b;
  for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
}

static uint8_t get(void) {
  uint8_t b = board_getc();
  crc_byte(b);
  return b;
}

static uint32_t get32(void) {
  uint32_t v = get();
  v |= (uint32_t)get() << 8;
  v |= (uint32_t)get() << 16;
  return v | (uint32_t)get() << 24;
}

static void put(uint8_t b) {
  crc_byte(b);
  board_putc(b);
}

static void put32(uint32_t v) {
  for (int k = 0; k < 4; ++k) put((uint8_t)(v >> (8 * k)));
}

static uint32_t le32(const uint8_t* p) {
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Replies are sent in pieces: begin (header), payload words/bytes, end (CRC). */
static void reply_begin(uint8_t command, uint8_t status, uint32_t length) {
  board_putc('T');
  board_putc('P');
  crc = 0xFFFFFFFFu;
  put(command | 0x80u);
  put32(length + 1u);
  put(status);
}

static void reply_end(void) {
  uint32_t value = ~crc;
  for (int k = 0; k < 4; ++k) board_putc((uint8_t)(value >> (8 * k)));
}

static void reply_status(uint8_t command, uint8_t status) {
  reply_begin(command, status, 0u);
  reply_end();
}

static uint32_t stack_high_water(void) {
  uint32_t* p = _sstack;
  while (p < _estack && *p == STACK_PAINT) ++p;
  return (uint32_t)((uint8_t*)_estack - (uint8_t*)p);
}

static void paint_stack(void) { /* up to 64 bytes below this function's frame */
  uint32_t* frame = (uint32_t*)__builtin_frame_address(0);
  for (uint32_t* p = _sstack; p < frame - 16; ++p) *p = STACK_PAINT;
}

/* Reads the rest of a frame whose payload goes to dst (NULL: dropped); checks its CRC. */
static int finish(uint8_t* dst, uint32_t length) {
  for (uint32_t k = 0; k < length; ++k) {
    uint8_t b = get();
    if (dst) dst[k] = b;
  }
  uint32_t expected = ~crc;
  uint32_t sent = board_getc();
  for (int k = 1; k < 4; ++k) sent |= (uint32_t)board_getc() << (8 * k);
  return sent == expected;
}

static void serve(void) {
  while (board_getc() != 'T') {
  }
  if (board_getc() != 'P') return;
  crc = 0xFFFFFFFFu;
  uint8_t command = get();
  uint32_t length = get32();
  if (command == WRITE && length >= 5u) { /* streamed straight into the arena */
    uint8_t index = get();
    uint32_t offset = get32(), bytes = length - 5u;
    int fits = index < TVMP_INPUTS && offset <= tvmp_inputs[index].bytes &&
               bytes <= tvmp_inputs[index].bytes - offset;
    uint8_t* dst = fits ? tvmp_arena + tvmp_inputs[index].offset + offset : NULL;
    int good = finish(dst, bytes);
    reply_status(command, !good ? BAD_CRC : fits ? OK : BAD_ARGS);
    return;
  }
  uint8_t args[16];
  int good = finish(length <= sizeof args ? args : NULL, length);
  if (!good) {
    reply_status(command, BAD_CRC);
  } else if (command == INFO) {
    reply_begin(command, OK, 4u * (8u + TVMP_INPUTS + TVMP_OUTPUTS));
    put32(PROTOCOL_VERSION);
    put32(tvmp_model_id);
    put32(TVMP_ARENA_BYTES);
    put32(TVMP_LAYERS);
    put32(TVMP_INPUTS);
    put32(TVMP_OUTPUTS);
    for (uint32_t k = 0; k < TVMP_INPUTS; ++k) put32(tvmp_inputs[k].bytes);
    for (uint32_t k = 0; k < TVMP_OUTPUTS; ++k) put32(tvmp_outputs[k].bytes);
    put32((uint32_t)((uint8_t*)_estack - (uint8_t*)_sstack));
    put32(board_cycles() != board_cycles() ? 1u : 0u); /* does the cycle counter run? */
    reply_end();
  } else if (command == RUN && length == 0u) {
    paint_stack();
    tvmp_run();
    uint32_t stack = stack_high_water();
    reply_begin(command, OK, 4u * (TVMP_LAYERS + 3u));
    put32(TVMP_LAYERS);
    for (uint32_t k = 0; k < TVMP_LAYERS; ++k) put32(marks[k + 1u] - marks[k]);
    put32(marks[TVMP_LAYERS] - marks[0]);
    put32(stack);
    reply_end();
  } else if (command == READ && length == 9u) {
    uint8_t index = args[0];
    uint32_t offset = le32(args + 1), bytes = le32(args + 5);
    if (index >= TVMP_OUTPUTS || offset > tvmp_outputs[index].bytes ||
        bytes > tvmp_outputs[index].bytes - offset) {
      reply_status(command, BAD_ARGS);
      return;
    }
    const uint8_t* src = tvmp_arena + tvmp_outputs[index].offset + offset;
    reply_begin(command, OK, bytes);
    for (uint32_t k = 0; k < bytes; ++k) put(src[k]);
    reply_end();
  } else {
    reply_status(command, length <= sizeof args ? UNKNOWN : BAD_ARGS);
  }
}

/* Any fault: tell the host (configurable fault status and hard fault status), then stop. */
void tvmp_fault(void) {
  reply_begin('F', FAULT, 8u);
  put32(*(volatile uint32_t*)0xE000ED28u); /* CFSR */
  put32(*(volatile uint32_t*)0xE000ED2Cu); /* HFSR */
  reply_end();
  for (;;) {
  }
}

int main(void) {
  board_init();
  for (;;) serve();
}
