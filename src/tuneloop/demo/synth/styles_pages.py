"""Statement-like pages: the year-end tax and escrow summary, the online account page.

Same conventions as :mod:`styles_formal`: answers only through the builder, ``key=`` picks shape
the skeleton.
"""

from __future__ import annotations

import datetime as dt

from tuneloop.demo.synth import parts
from tuneloop.demo.synth.doc import DocBuilder
from tuneloop.demo.synth.styles_formal import join_sections as _join
from tuneloop.demo.synth.styles_formal import table

# ---------------------------------------------------------------- annual tax / escrow summary


def annual_summary(b: DocBuilder) -> str:
    f = b.facts
    # Year-end statements go out in January, before the first or second payment of the year.
    b.move_due_date(dt.date(f.next_due.year, b.pick([2, 2, 3]), f.next_due.day))
    year = f.statement_date.year - 1
    title = b.pick(
        [
            f"{year} Annual Tax and Interest Statement",
            f"Year-End Statement {year}",
            f"{year} ANNUAL ESCROW ACCOUNT HISTORY",
            f"Form 1098 Mortgage Interest Statement - Tax Year {year}",
            f"Your {year} Mortgage Year in Review",
            f"Annual Loan Summary for {year}",
            f"IMPORTANT TAX DOCUMENT ENCLOSED - {year}",
        ],
        key="title",
    )
    rows = b.rng.sample(_annual_distractor_rows(b, year), b.rng.randint(3, 6))
    if b.has("escrow_balance"):
        label = b.pick(
            [
                "Escrow balance as of 12/31/{y}",
                "Escrow Balance 12/31/{y}",
                "Ending escrow balance",
                "Escrow account balance at year end",
                "ESCROW BAL (EOY)",
            ]
        )
        rows.append((label.format(y=year), b.escrow("table")))
    if b.has("interest_rate"):
        rows.append((parts.label(b, "rate"), b.rate("table")))
    rows = b.shuffled(rows)
    due = None
    if b.has("next_due_date"):
        due = b.pick(
            ["Your next payment is due {due}.", "Next payment due: {due}", "NEXT DUE {due}", "Next installment: {due}"]
        ).format(due=b.due_date("table"))
    note = b.pick(
        [
            "This information is being provided to the IRS. Keep this statement for your tax records.",
            "The amount in Box 1 may be deductible; consult a tax advisor.",
            "Mortgage insurance premiums are reported separately where applicable.",
            "If you sold or refinanced your home during the year, you may receive more than one statement.",
            None,
        ]
    )
    head = [f"{parts.label(b, 'statement_date')}: {b.anchor_date('table')}", parts.loan_reference(b)]
    if b.chance(0.5):
        head.append(parts.property_reference(b))
    return _join(
        [
            parts.letterhead(b),
            title,
            _join(head, "\n"),
            b.borrower_block() if b.chance(0.7) else None,
            table(b, rows, key="rows"),
            due,
            note,
            *parts.extra_paragraphs(b, 1),
        ]
    )


def _annual_distractor_rows(b: DocBuilder, year: int) -> list[tuple[str, str]]:
    f = b.facts
    interest_paid = round(f.principal * f.rate / 100 * b.rng.uniform(0.85, 1.0), 2)
    taxes = round(f.escrow_monthly * 12 * b.rng.uniform(0.55, 0.75), 2)
    return [
        (
            b.pick(
                [
                    "Mortgage interest received from payer(s)/borrower(s)",
                    "Interest Paid",
                    "Box 1 Mortgage Interest",
                    "Total interest paid",
                    "INTEREST PD YTD",
                ]
            ),
            b.money(interest_paid, "table"),
        ),
        (
            b.pick(
                [f"Outstanding principal as of 01/01/{year}", f"Principal balance 1/1/{year}", "Beginning principal"]
            ),
            b.money(round(f.principal * b.rng.uniform(1.01, 1.06), 2), "table"),
        ),
        (b.pick(["Points paid on purchase", "Box 6 Points"]), b.money(0.0, "table")),
        (b.pick(["Property taxes disbursed", "Real estate taxes paid", "County tax paid"]), b.money(taxes, "table")),
        (
            b.pick(["Hazard insurance disbursed", "Insurance paid", "Homeowners premium paid"]),
            b.money(round(f.escrow_monthly * 12 - taxes, 2), "table"),
        ),
        (
            b.pick([f"Principal balance as of 12/31/{year}", "Ending principal balance", "Principal Bal EOY"]),
            b.money(f.principal, "table"),
        ),
        (b.pick(["Mortgage insurance premiums", "PMI paid"]), b.money(round(b.rng.uniform(0, 1800), 2), "table")),
        (
            b.pick(["Total payments received", "Payments received in " + str(year)]),
            b.money(round(f.monthly_payment * 12, 2), "table"),
        ),
        (b.pick(["Late charges paid", "Fees paid"]), b.money(b.pick([0.0, f.late_fee]), "table")),
        (
            b.pick(["Mortgage origination date", "Loan date"]),
            f"{b.rng.randint(1, 12):02d}/{b.rng.randint(1, 28):02d}/{year - b.rng.randint(1, 12)}",
        ),
    ]


# ---------------------------------------------------------------- online account page (copy-paste)


_PORTAL_NAVS = (
    "Home | Payments | Documents | Escrow | Help",
    "Overview  Pay  Statements  Profile  Sign Out",
    "MENU\nDashboard\nMake a Payment\nDocuments\nMessages",
    "My Accounts > Mortgage > Summary",
    "Dashboard / Loan Details",
    "Skip to main content\nAccounts  Transfers  Bill Pay  Mortgage",
    "< Back to all accounts",
)
_PORTAL_GREETINGS = (
    "Welcome back, {first}",
    "Hi {FIRST}",
    "Loan Overview",
    "Account Summary",
    "My Loan",
    "Good morning, {first}!",
    "Mortgage details",
    "Your home loan at a glance",
    "LOAN SUMMARY",
    "Hello {first}, here's your loan",
)
_PORTAL_FOOTERS = (
    "Set up AutoPay",
    "Go paperless",
    "(c) All rights reserved. Privacy | Terms | Accessibility",
    "Need help? Chat with us",
    "Make a one-time payment >",
    "Download statement (PDF)",
    "Contact us | Security Center",
    "Last login: {login}",
)


def portal_summary(b: DocBuilder) -> str:
    f = b.facts
    tiles = _portal_answer_tiles(b) + b.rng.sample(_portal_extra_tiles(b), b.rng.randint(1, 5))
    sep = b.pick(["\n", ": ", "\t", " ", "  |  ", "\n\n"], key="tile_sep")
    lines = [f"{label}{sep}{value}" for label, value in b.shuffled(tiles)]
    if b.chance(0.3):  # some pages print the values in a second column block
        lines = [label for label, _ in tiles] + [value for _, value in tiles]
    header = b.servicer(upper=b.chance(0.6)) if b.has("servicer") else None
    loan = None
    if b.has("account_last4"):
        label = b.pick(["Loan ending in", "Loan", "Mortgage", "Account", "Home Loan", "Acct."])
        loan = f"{label} {b.last4(b.pick(['bare', 'stars', 'dots', 'xs']))}"
    greeting = b.pick(_PORTAL_GREETINGS, key="greeting").format(first=f.borrower_first, FIRST=f.borrower_first.upper())
    footers = b.rng.sample(_PORTAL_FOOTERS, b.rng.randint(0, 3))
    login = f"{b.date(f.statement_date, 'table')} {b.rng.randint(1, 12)}:{b.rng.randint(0, 59):02d} PM"
    parts_ = [header, b.pick(_PORTAL_NAVS, key="nav"), greeting, loan, "\n".join(lines), *footers]
    return _join([p.format(login=login) if p and "{login}" in p else p for p in parts_], "\n")


def _portal_answer_tiles(b: DocBuilder) -> list[tuple[str, str]]:
    f = b.facts
    tiles: list[tuple[str, str]] = []
    if b.has("next_due_date"):
        tiles.append(
            (
                b.pick(["Next Payment Due", "Payment Due Date", "Due Date", "Next payment", "Due on"]),
                b.due_date("table"),
            )
        )
    if b.has("interest_rate"):
        tiles.append(
            (b.pick(["Interest Rate", "Rate", "Current rate", "Interest rate (fixed)", "Note Rate"]), b.rate("table"))
        )
    if b.has("escrow_balance"):
        tiles.append(
            (
                b.pick(["Escrow Balance", "Escrow", "Escrow account balance", "Escrow (taxes & insurance)"]),
                b.escrow("table"),
            )
        )
    if b.has("payoff_amount"):
        label = b.pick(
            ["Payoff Amount (good through {d})", "Estimated payoff as of {d}", "Payoff quote - valid until {d}"]
        )
        tiles.append((label.format(d=b.date(f.good_through, "table")), b.payoff("table", lossy=False)))
    elif b.chance(0.5):
        tiles.append(("Payoff Amount", b.pick(["Request a payoff quote", "Get Quote >", "--", "Request"])))
    return tiles


def _portal_extra_tiles(b: DocBuilder) -> list[tuple[str, str]]:
    """Distractor tiles; a random few appear on each page."""
    f = b.facts
    maturity = f"{b.rng.randint(1, 12):02d}/01/{f.next_due.year + b.rng.randint(5, 29)}"
    return [
        (
            b.pick(["Amount Due", "Monthly Payment", "Payment Amount", "Total payment"]),
            b.money(f.monthly_payment, "table"),
        ),
        (
            b.pick(["Principal Balance", "Unpaid Principal", "Loan Balance", "Remaining balance"]),
            b.money(f.principal, "table"),
        ),
        (
            b.pick(["Last Payment Received", "Last Payment", "Most recent payment"]),
            f"{b.money(f.monthly_payment, 'table')} on {b.date(f.last_paid, 'table')}",
        ),
        (b.pick(["Original Loan Amount", "Original balance"]), b.money(f.original_amount, "table")),
        (b.pick(["Maturity Date", "Loan matures"]), maturity),
        (
            b.pick(["Loan Type", "Product"]),
            b.pick(["30-Year Fixed", "15-Year Fixed", "FHA 30 Yr", "VA Fixed", "Conventional"]),
        ),
        (b.pick(["AutoPay", "Automatic payments"]), b.pick(["On", "Off", "Not enrolled", "Enrolled"])),
        (
            b.pick(["Interest paid YTD", "Year-to-date interest"]),
            b.money(round(f.principal * f.rate / 100 * f.next_due.month / 12, 2), "table"),
        ),
        (b.pick(["Property", "Property address"]), f"{f.street}, {f.city}, {f.state} {f.zip_code}"),
        (b.pick(["Escrow payment", "Monthly escrow"]), b.money(f.escrow_monthly, "table")),
    ]
