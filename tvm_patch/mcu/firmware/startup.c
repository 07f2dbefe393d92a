/* Cortex-M7 start-up: vector table, .data/.bss set-up, FPU on, then main(). */
#include <stdint.h>

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
int main(void);
void tvmp_fault(void);

void Reset_Handler(void) {
  for (uint32_t *src = _sidata, *dst = _sdata; dst < _edata;) *dst++ = *src++;
  for (uint32_t* dst = _sbss; dst < _ebss;) *dst++ = 0;
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10 and CP11 (the FPU) on */
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  main();
  for (;;) {
  }
}

static void Fault_Handler(void) { tvmp_fault(); }

__attribute__((section(".isr_vector"), used)) void (*const tvmp_vectors[16])(void) = {
    (void (*)(void))_estack, Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
};
