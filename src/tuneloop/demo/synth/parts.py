"""Pieces shared by many styles: salutations, closings, disclaimers, footers, label synonyms."""

from __future__ import annotations

from tuneloop.demo.synth.doc import DocBuilder

_DISCLAIMERS = (
    "This communication is from a debt collector attempting to collect a debt; any information obtained "
    "will be used for that purpose.",
    "If you are currently in bankruptcy or have received a discharge in bankruptcy, this communication is "
    "for informational purposes only and is not an attempt to collect a debt from you personally.",
    "Figures are subject to change due to disbursements, payments received, or fees assessed after the date "
    "of this statement.",
    "NMLS ID #{nmls}. Equal Housing Opportunity.",
    "Equal Housing Lender. Member FDIC.",
    "If you are a servicemember on active duty, you may be entitled to protections under the Servicemembers "
    "Civil Relief Act (SCRA).",
    "HUD-approved housing counselors are available free of charge; call 800-569-4287 to find one near you.",
    "Please keep this notice for your records.",
    "Our privacy notice is available at any time on request.",
    "Calls may be monitored or recorded for quality assurance.",
    "Personal checks are not accepted for payoff; please use certified funds or wire transfer.",
    "This statement does not waive any rights under the note or security instrument.",
    "Para asistencia en español, llame al {phone}.",
    "Funds received after 4:00 p.m. ET will be processed the next business day.",
)

_EXTRA_PARAGRAPHS = (
    "Ways to pay: online at {site}, by phone at {phone}, or by mail to the payment address on your statement.",
    "Our customer service hours are Monday through Friday, 8 a.m. to 9 p.m., and Saturday 9 a.m. to 3 p.m. ET.",
    "If you are experiencing a financial hardship, options may be available to help. Visit {site} or call {phone}.",
    "To request a copy of your payment history, call us or send a written request to the address above.",
    "Notices of error and requests for information must be sent in writing to: {address}.",
    "Partial payments: any partial payment you make is not applied to your mortgage but held in a separate "
    "suspense account until you pay the rest of the payment.",
    "Homeowners insurance must be kept in force at all times. If your policy lapses, we may buy coverage for you "
    "at a higher cost.",
    "Go paperless! Sign up for electronic statements at {site}.",
    'You may make additional principal payments at any time. Write "principal only" on the memo line.',
    "Questions? Our automated phone system is available 24 hours a day at {phone}.",
    "Beware of scams: we will never ask you to wire a payment to a personal account.",
    "If your property is located in a disaster area, assistance may be available. Call {phone}.",
)

_CLOSINGS = (
    "Sincerely,",
    "Respectfully,",
    "Thank you,",
    "Regards,",
    "Best regards,",
    "Kind regards,",
    "Thank you for your business,",
)

_DEPARTMENTS = (
    "Loan Servicing Department",
    "Customer Service",
    "Payoff Department",
    "Escrow Department",
    "Customer Care Team",
    "Borrower Services",
    "Default Servicing",
    "Correspondence Unit",
)

_SALUTATIONS = (
    "Dear {first} {last}:",
    "Dear {first},",
    "Dear Borrower(s):",
    "Dear Customer,",
    "Dear Homeowner:",
    "To whom it may concern:",
    "Dear Mr./Ms. {last}:",
    "Hello {first},",
)


def salutation(b: DocBuilder) -> str:
    return b.pick(_SALUTATIONS).format(first=b.facts.borrower_first, last=b.facts.borrower_last)


def closing(b: DocBuilder) -> str:
    lines = [b.pick(_CLOSINGS), b.pick(_DEPARTMENTS)]
    if b.has("servicer") and b.chance(0.7):
        lines.append(b.servicer())
    if b.chance(0.5):
        lines.append(f"{b.pick(['Phone', 'Tel', 'Call us', 'Toll-free'])}: {b.phone()}")
    return "\n".join(lines)


def disclaimers(b: DocBuilder, most: int = 2) -> str | None:
    count = b.rng.randint(0, most)
    if not count:
        return None
    chosen = b.rng.sample(_DISCLAIMERS, count)
    return "\n".join(text.format(nmls=b.facts.nmls, phone=b.phone()) for text in chosen)


def letterhead(b: DocBuilder) -> str:
    """Sender block at the top of a letter: name (when stated) with a mailing address."""
    lines = []
    if b.has("servicer"):
        lines.append(b.servicer())
    elif b.chance(0.5):
        lines.append(b.pick(_DEPARTMENTS))
    lines.append(b.servicer_address().replace("\n", b.pick(["\n", ", ", " | "])))
    if b.chance(0.6):
        lines.append(b.pick(["Phone", "Customer Service", "Toll free", "Tel."]) + f" {b.phone()}")
    if b.has("servicer") and b.chance(0.4):
        lines.append(f"www.{b.facts.servicer.domain}")
    return "\n".join(lines)


def loan_reference(b: DocBuilder) -> str | None:
    """The 'Loan number: ****1234' line, or None when the account is not stated."""
    if not b.has("account_last4"):
        return None
    label = b.pick(["Loan Number", "Loan No.", "Loan #", "Account Number", "Account", "Acct #", "Mortgage Account"])
    return f"{label}: {b.last4()}"


def property_reference(b: DocBuilder) -> str:
    label = b.pick(["Property Address", "Property", "Collateral", "Subject Property", "Re property at"])
    return f"{label}: {b.facts.street}, {b.facts.city}, {b.facts.state} {b.facts.zip_code}"


def label(b: DocBuilder, kind: str) -> str:
    """A label synonym for a line of a statement or table."""
    return b.pick(LABELS[kind])


LABELS: dict[str, tuple[str, ...]] = {
    "payoff": (
        "Total Payoff Amount",
        "Total Amount to Pay Off",
        "Payoff Amount",
        "Total Amount Due to Pay Loan in Full",
        "Amount Required to Pay in Full",
        "Payoff Total",
        "TOTAL PAYOFF",
        "Net Payoff Amount",
    ),
    "escrow": (
        "Escrow Balance",
        "Current Escrow Balance",
        "Escrow Account Balance",
        "Escrow Bal.",
        "Balance in Escrow",
        "Escrow/Impound Balance",
        "ESCROW BALANCE",
    ),
    "due": (
        "Payment Due Date",
        "Next Payment Due",
        "Next Due Date",
        "Due Date",
        "Next Installment Due",
        "Payment Due",
        "NEXT DUE DATE",
    ),
    "rate": ("Interest Rate", "Current Interest Rate", "Note Rate", "Rate", "Interest Rate (Fixed)", "INT RATE"),
    "principal": (
        "Unpaid Principal Balance",
        "Principal Balance",
        "Outstanding Principal",
        "Principal",
        "UPB",
        "Current Principal Balance",
    ),
    "interest": ("Accrued Interest", "Interest Due", "Interest to Payoff Date", "Unpaid Interest", "Interest"),
    "monthly": (
        "Monthly Payment",
        "Regular Monthly Payment",
        "Total Monthly Payment",
        "Installment Amount",
        "Current Payment",
    ),
    "statement_date": ("Statement Date", "Date", "Date Issued", "Letter Date", "As of"),
    "good_through": ("Good Through", "Payoff Good Through", "Valid Through", "Figures Good Through", "Good Thru"),
}


def extra_paragraphs(b: DocBuilder, most: int = 2) -> list[str]:
    """Zero to ``most`` boilerplate paragraphs (payment options, hours, notices)."""
    site = f"www.{b.facts.servicer.domain}" if b.has("servicer") else "our website"
    address = b.servicer_address().replace("\n", ", ")
    chosen = b.rng.sample(_EXTRA_PARAGRAPHS, b.rng.randint(0, most))
    return [text.format(site=site, phone=b.phone(), address=address) for text in chosen]
