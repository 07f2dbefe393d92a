/* Board support for the STM32F746G-DISCO (STM32F746NG, Cortex-M7), bare metal, no CMSIS/HAL.
 * Clock: 25 MHz HSE crystal -> PLL -> 216 MHz SYSCLK (AHB 216, APB1 54, APB2 108 MHz).
 * Serial: USART1 on the ST-LINK virtual COM port (PA9 = TX, PB7 = RX, AF7), 115200 8N1.
 * Register addresses and bits: RM0385 (STM32F75xxx/74xxx) and the ARMv7-M ARM / Cortex-M7 TRM. */
#include <stddef.h>
#include <stdint.h>

#include "board.h"

#define TVMP_CPU_HZ 216000000u
#define TVMP_BAUD   115200u

#define HSI_HZ    16000000u            /* internal RC, the fallback SYSCLK */
#define PCLK2_HZ  (TVMP_CPU_HZ / 2u)   /* APB2 = 108 MHz, clocks USART1 */
#define WAIT_MAX  2000000u             /* poll bound: ~0.5 s on the 16 MHz HSI (HAL allows HSE 100 ms) */

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* ---- STM32F746 peripherals (RM0385) ---- */
#define RCC_CR        REG32(0x40023800u)  /* RCC clock control register */
#define RCC_PLLCFGR   REG32(0x40023804u)  /* RCC PLL configuration register */
#define RCC_CFGR      REG32(0x40023808u)  /* RCC clock configuration register */
#define RCC_AHB1ENR   REG32(0x40023830u)  /* RCC AHB1 peripheral clock enable register */
#define RCC_APB1ENR   REG32(0x40023840u)  /* RCC APB1 peripheral clock enable register */
#define RCC_APB2ENR   REG32(0x40023844u)  /* RCC APB2 peripheral clock enable register */
#define RCC_DCKCFGR2  REG32(0x40023890u)  /* RCC dedicated clocks configuration register 2 */
#define PWR_CR1       REG32(0x40007000u)  /* PWR power control register 1 */
#define PWR_CSR1      REG32(0x40007004u)  /* PWR power control/status register 1 */
#define FLASH_ACR     REG32(0x40023C00u)  /* Flash access control register */

typedef struct {            /* GPIO port, RM0385 section 6.4 */
    volatile uint32_t MODER;    /* 0x00 mode */
    volatile uint32_t OTYPER;   /* 0x04 output type */
    volatile uint32_t OSPEEDR;  /* 0x08 output speed */
    volatile uint32_t PUPDR;    /* 0x0C pull-up/pull-down */
    volatile uint32_t IDR, ODR, BSRR, LCKR;  /* 0x10..0x1C, unused */
    volatile uint32_t AFR[2];   /* 0x20 AFRL (pins 0-7), 0x24 AFRH (pins 8-15) */
} gpio_t;

typedef struct {            /* USART, RM0385 section 34.8 */
    volatile uint32_t CR1;      /* 0x00 control 1 */
    volatile uint32_t CR2;      /* 0x04 control 2 */
    volatile uint32_t CR3;      /* 0x08 control 3 */
    volatile uint32_t BRR;      /* 0x0C baud rate */
    volatile uint32_t GTPR, RTOR, RQR;  /* 0x10..0x18, unused */
    volatile uint32_t ISR;      /* 0x1C interrupt and status */
    volatile uint32_t ICR;      /* 0x20 interrupt flag clear */
    volatile uint32_t RDR;      /* 0x24 receive data */
    volatile uint32_t TDR;      /* 0x28 transmit data */
} usart_t;

_Static_assert(offsetof(gpio_t, AFR) == 0x20, "GPIO layout");
_Static_assert(offsetof(usart_t, TDR) == 0x28, "USART layout");

#define GPIOA   ((gpio_t *)0x40020000u)
#define GPIOB   ((gpio_t *)0x40020400u)
#define USART1  ((usart_t *)0x40011000u)

/* ---- Cortex-M7 core (ARMv7-M ARM, Cortex-M7 TRM) ---- */
#define SCB_CCR      REG32(0xE000ED14u)  /* Configuration and Control Register */
#define SCB_CCSIDR   REG32(0xE000ED80u)  /* Cache Size ID Register */
#define SCB_CSSELR   REG32(0xE000ED84u)  /* Cache Size Selection Register */
#define SCB_ICIALLU  REG32(0xE000EF50u)  /* I-cache invalidate all to PoU */
#define SCB_DCISW    REG32(0xE000EF60u)  /* D-cache invalidate by set/way */
#define DEMCR        REG32(0xE000EDFCu)  /* CoreDebug Debug Exception and Monitor Control Register */
#define DWT_CTRL     REG32(0xE0001000u)  /* DWT Control Register */
#define DWT_CYCCNT   REG32(0xE0001004u)  /* DWT Cycle Count Register */
#define DWT_LAR      REG32(0xE0001FB0u)  /* DWT Lock Access Register */

#define BIT(n) (1u << (n))

static inline void dsb(void) { __asm__ volatile ("dsb sy" ::: "memory"); }
static inline void isb(void) { __asm__ volatile ("isb sy" ::: "memory"); }

/* Poll until (reg & mask) == want; returns 0 if that never happens within WAIT_MAX reads. */
static int wait_for(volatile uint32_t *reg, uint32_t mask, uint32_t want)
{
    for (uint32_t n = 0; n < WAIT_MAX; n++)
        if ((*reg & mask) == want)
            return 1;
    return 0;
}

/* Returns the PCLK2 frequency actually achieved. If the HSE crystal does not start, the PLL
 * runs from HSI instead (same 216 MHz, ~1% accuracy). If the PLL or over-drive fails, the
 * core stays on HSI at 16 MHz with all prescalers /1, so the serial port still works (but
 * then the cycle counter runs at 16 MHz, not TVMP_CPU_HZ). */
static uint32_t clock_init(void)
{
    uint32_t pllm = 25u, pllsrc = BIT(22);              /* HSE 25 MHz / 25 = 1 MHz VCO input */

    /* Run from HSI with the PLL off, so it can be reprogrammed even if board_init re-runs. */
    RCC_CR |= BIT(0);                                   /* HSION */
    if (!wait_for(&RCC_CR, BIT(1), BIT(1))) return HSI_HZ;  /* HSIRDY */
    RCC_CFGR = 0;                                       /* SW = HSI, HPRE/PPRE1/PPRE2 = /1 */
    if (!wait_for(&RCC_CFGR, 3u << 2, 0)) return HSI_HZ;    /* SWS = HSI */
    RCC_CR &= ~BIT(24);                                 /* PLLON off */
    if (!wait_for(&RCC_CR, BIT(25), 0)) return HSI_HZ;  /* PLLRDY clear */

    RCC_CR &= ~BIT(18);                                 /* HSEBYP = 0: crystal, not bypass */
    RCC_CR |= BIT(16);                                  /* HSEON */
    if (!wait_for(&RCC_CR, BIT(17), BIT(17))) {         /* HSERDY */
        RCC_CR &= ~BIT(16);
        pllm = 16u; pllsrc = 0;                         /* fallback: HSI 16 MHz / 16 = 1 MHz */
    }

    RCC_APB1ENR |= BIT(28);                             /* PWREN */
    (void)RCC_APB1ENR;                                  /* read back: clock active before use */
    PWR_CR1 = (PWR_CR1 & ~(3u << 14)) | (3u << 14);     /* VOS = 11: scale 1 (PLL must be off) */

    /* VCO = 1 MHz * 432 = 432 MHz; P = 2 -> 216 MHz; Q = 9 -> 48 MHz. Reserved bits kept. */
    RCC_PLLCFGR = (RCC_PLLCFGR & ~(0x3Fu | (0x1FFu << 6) | (3u << 16) | BIT(22) | (0xFu << 24)))
                | pllm | (432u << 6) | (0u << 16) /* PLLP=2 */ | pllsrc | (9u << 24);
    RCC_CR |= BIT(24);                                  /* PLLON */
    if (!wait_for(&RCC_CR, BIT(25), BIT(25))) goto fail;     /* PLLRDY */

    PWR_CR1 |= BIT(16);                                 /* ODEN */
    if (!wait_for(&PWR_CSR1, BIT(16), BIT(16))) goto fail;   /* ODRDY */
    PWR_CR1 |= BIT(17);                                 /* ODSWEN */
    if (!wait_for(&PWR_CSR1, BIT(17), BIT(17))) goto fail;   /* ODSWRDY */

    FLASH_ACR = 7u | BIT(8) | BIT(9);                   /* LATENCY = 7 WS, PRFTEN, ARTEN */
    if ((FLASH_ACR & 0xFu) != 7u) goto fail;

    RCC_CFGR = (0u << 4) | (5u << 10) | (4u << 13);    /* HPRE /1, PPRE1 /4, PPRE2 /2 */
    RCC_CFGR |= 2u;                                     /* SW = PLL */
    if (!wait_for(&RCC_CFGR, 3u << 2, 2u << 2)) goto fail;   /* SWS = PLL */
    return PCLK2_HZ;

fail:
    RCC_CFGR = 0;                                       /* back to HSI, prescalers /1 */
    return HSI_HZ;
}

/* Cortex-M7 L1 caches: invalidate, then enable (the sequence of CMSIS SCB_Enable*Cache). */
static void cache_init(void)
{
    dsb(); isb();
    SCB_ICIALLU = 0;                                    /* invalidate the whole I-cache */
    dsb(); isb();
    SCB_CCR |= BIT(17);                                 /* IC */
    dsb(); isb();

    if (SCB_CCR & BIT(16)) return;                      /* D-cache already on: keep its data */
    SCB_CSSELR = 0;                                     /* select the L1 data cache */
    dsb();
    uint32_t ccsidr = SCB_CCSIDR;
    uint32_t sets = (ccsidr >> 13) & 0x7FFFu;           /* NumSets - 1 */
    uint32_t ways = (ccsidr >> 3) & 0x3FFu;             /* Associativity - 1 */
    for (uint32_t s = 0; s <= sets; s++)
        for (uint32_t w = 0; w <= ways; w++)
            SCB_DCISW = ((s << 5) & (0x1FFu << 5)) | ((w << 30) & (3u << 30));
    dsb();
    SCB_CCR |= BIT(16);                                 /* DC */
    dsb(); isb();
}

static void usart1_init(uint32_t pclk2_hz)
{
    RCC_AHB1ENR |= BIT(0) | BIT(1);                     /* GPIOAEN, GPIOBEN */
    RCC_APB2ENR |= BIT(4);                              /* USART1EN */
    (void)RCC_APB2ENR;
    RCC_DCKCFGR2 &= ~3u;                                /* USART1SEL = 00: PCLK2 (reset value) */

    /* PA9 = USART1_TX: alternate function AF7 (AFRH), push-pull, high speed, no pull. */
    GPIOA->MODER   = (GPIOA->MODER   & ~(3u << 18)) | (2u << 18);
    GPIOA->OTYPER &= ~BIT(9);
    GPIOA->OSPEEDR = (GPIOA->OSPEEDR & ~(3u << 18)) | (2u << 18);
    GPIOA->PUPDR  &= ~(3u << 18);
    GPIOA->AFR[1]  = (GPIOA->AFR[1]  & ~(0xFu << 4)) | (7u << 4);
    /* PB7 = USART1_RX: alternate function AF7 (AFRL), high speed, pull-up. */
    GPIOB->MODER   = (GPIOB->MODER   & ~(3u << 14)) | (2u << 14);
    GPIOB->OSPEEDR = (GPIOB->OSPEEDR & ~(3u << 14)) | (2u << 14);
    GPIOB->PUPDR   = (GPIOB->PUPDR   & ~(3u << 14)) | (1u << 14);
    GPIOB->AFR[0]  = (GPIOB->AFR[0]  & ~(0xFu << 28)) | (7u << 28);

    USART1->CR1 = 0;                                    /* UE = 0 while configuring; M = 8 bits,
                                                           no parity, OVER8 = 0 (x16) */
    USART1->CR2 = 0;                                    /* 1 stop bit */
    USART1->CR3 = 0;                                    /* no flow control */
    USART1->BRR = (pclk2_hz + TVMP_BAUD / 2u) / TVMP_BAUD;  /* 108e6 / 115200 -> 938 */
    USART1->CR1 = BIT(3) | BIT(2) | BIT(0);             /* TE, RE, UE */
}

static void cycle_counter_init(void)
{
    DEMCR |= BIT(24);                                   /* TRCENA: power the DWT */
    DWT_LAR = 0xC5ACCE55u;                              /* unlock DWT writes (Cortex-M7) */
    DWT_CYCCNT = 0;
    DWT_CTRL |= BIT(0);                                 /* CYCCNTENA */
}

void board_init(void)
{
    uint32_t pclk2 = clock_init();
    cache_init();
    usart1_init(pclk2);
    cycle_counter_init();
}

void board_putc(uint8_t c)
{
    while (!(USART1->ISR & BIT(7))) { }                 /* TXE */
    USART1->TDR = c;
}

uint8_t board_getc(void)
{
    for (;;) {
        uint32_t isr = USART1->ISR;
        if (isr & BIT(3))                               /* ORE: would block reception */
            USART1->ICR = BIT(3);                       /* ORECF */
        if (isr & BIT(5))                               /* RXNE */
            return (uint8_t)USART1->RDR;
    }
}

uint32_t board_cycles(void)
{
    return DWT_CYCCNT;
}
