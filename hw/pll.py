"""PLL settings and instances for the boards' system clock (ECP5 EHXPLLL, iCE40 SB_PLL40_PAD).

The divider searches follow the open tools' own calculators (Trellis `ecppll`, IceStorm
`icepll`) so the settings match what those print; tests/test_synth.py checks a few against
values the tools printed here. Each returns the frequency actually reached, which is what the
clock constraint and the reports use.
"""

from dataclasses import dataclass

from amaranth.hdl import Instance

__all__ = ["Ecp5PllParams", "Ice40PllParams", "ecp5_pll_params", "ice40_pll_params",
           "ecp5_pll", "ice40_pll_pad"]


@dataclass(frozen=True)
class Ecp5PllParams:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    fin_mhz: float
    fout_mhz: float
    fvco_mhz: float


@dataclass(frozen=True)
class Ice40PllParams:
    divr: int
    divf: int
    divq: int
    filter_range: int
    fin_mhz: float
    fout_mhz: float
    fvco_mhz: float


def ecp5_pll_params(fin_mhz, fout_mhz, max_error=0.01):
    """EHXPLLL dividers for CLKOP (feedback from CLKOP), as Trellis `ecppll` picks them:
    smallest output error, ties broken towards a 600 MHz VCO (the middle of 400–800 MHz)."""
    best = None
    for clki_div in range(1, 129):
        fpfd = fin_mhz / clki_div
        if not 3.125 <= fpfd <= 400:
            continue
        for clkfb_div in range(1, 81):
            fout = fpfd * clkfb_div
            for clkop_div in range(1, 129):
                fvco = fout * clkop_div
                if not 400 <= fvco <= 800:
                    continue
                key = (abs(fout - fout_mhz), abs(fvco - 600))
                # CLKOP_CPHASE only sets the output's phase against the input, which nothing
                # here depends on; (div-1)//2 matches ecppll for the dividers tested, though
                # ecppll picks one more for some (e.g. 9 rather than 8 for CLKOP_DIV 18).
                if best is None or key < best[0]:
                    best = (key, Ecp5PllParams(clki_div, clkfb_div, clkop_div, (clkop_div - 1) // 2,
                                               fin_mhz, fout, fvco))
    if best is None or best[0][0] > max_error * fout_mhz:
        raise ValueError(f"ECP5 PLL cannot make {fout_mhz} MHz from {fin_mhz} MHz")
    return best[1]


def ice40_pll_params(fin_mhz, fout_mhz, max_error=0.01):
    """SB_PLL40 dividers with SIMPLE feedback, as IceStorm `icepll` picks them (smallest error)."""
    best = None
    for divr in range(16):
        fpfd = fin_mhz / (divr + 1)
        if not 10 <= fpfd <= 133:
            continue
        for divf in range(128):
            fvco = fpfd * (divf + 1)
            if not 533 <= fvco <= 1066:
                continue
            for divq in range(1, 7):
                fout = fvco / (1 << divq)
                err = abs(fout - fout_mhz)
                if best is None or err < best[0]:
                    # Loop-filter setting from the PFD frequency (iCE40 sysCLOCK PLL guide).
                    filter_range = 1 + sum(fpfd >= lim for lim in (17, 26, 44, 66, 101))
                    best = (err, Ice40PllParams(divr, divf, divq, filter_range, fin_mhz, fout, fvco))
    if best is None or best[0] > max_error * fout_mhz:
        raise ValueError(f"iCE40 PLL cannot make {fout_mhz} MHz from {fin_mhz} MHz")
    return best[1]


def ecp5_pll(params, clk_in, clk_out, locked):
    """An EHXPLLL instance driving ``clk_out`` from ``clk_in`` (the attributes are what `ecppll`
    emits; nextpnr reads FREQUENCY_PIN_* to constrain the output clock)."""
    return Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{params.fin_mhz:g}",
        a_FREQUENCY_PIN_CLKOP=f"{params.fout_mhz:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
        a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED",
        p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=params.clki_div,
        p_CLKOP_ENABLE="ENABLED",
        p_CLKOP_DIV=params.clkop_div,
        p_CLKOP_CPHASE=params.clkop_cphase,
        p_CLKOP_FPHASE=0,
        p_FEEDBK_PATH="CLKOP",
        p_CLKFB_DIV=params.clkfb_div,
        i_RST=0, i_STDBY=0,
        i_CLKI=clk_in,
        o_CLKOP=clk_out,
        i_CLKFB=clk_out,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
        i_PLLWAKESYNC=0, i_ENCLKOP=0,
        o_LOCK=locked,
    )


def ice40_pll_pad(params, pad, clk_out, locked):
    """An SB_PLL40_PAD fed straight from the clock pin ``pad`` (an IOPort requested with
    ``dir="-"``): on the UP5K the board clock pin is the PLL's dedicated input."""
    return Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE",
        p_DIVR=params.divr,
        p_DIVF=params.divf,
        p_DIVQ=params.divq,
        p_FILTER_RANGE=params.filter_range,
        i_PACKAGEPIN=pad.io,
        i_RESETB=1,
        i_BYPASS=0,
        o_PLLOUTGLOBAL=clk_out,
        o_LOCK=locked,
    )
