"""Formal servicer documents: letters, statements, notices, the online account page.

Each style is a function ``(DocBuilder) -> str`` that writes one document. Answers come only
from the builder's answer renderers (so they are recorded and protected); each answer is written
only when ``b.has(field)``. ``key=`` picks shape the document's skeleton (used for the split).
"""

from __future__ import annotations

import datetime as dt

from tuneloop.demo.synth import parts
from tuneloop.demo.synth.doc import DocBuilder


def table(b: DocBuilder, rows: list[tuple[str, str]], key: str = "table") -> str:
    """Label/value rows in one of several layouts (colon, dot leaders, pipes, padded columns)."""
    layout = b.pick(["colon", "dots", "pipes", "padded", "tab", "dash"], key=key)
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        if layout == "colon":
            lines.append(f"{label}: {value}")
        elif layout == "dots":
            lines.append(f"{label} {'.' * (width + 6 - len(label))} {value}")
        elif layout == "pipes":
            lines.append(f"| {label.ljust(width)}| {value} |")
        elif layout == "padded":
            lines.append(f"{label.ljust(width + 4)}{value}")
        elif layout == "tab":
            lines.append(f"{label}\t{value}")
        else:
            lines.append(f"- {label} - {value}")
    return "\n".join(lines)


def join_sections(sections: list[str | None], sep: str = "\n\n") -> str:
    """The non-empty sections, blank-line separated (or by ``sep``)."""
    return sep.join(s for s in sections if s)


def _escrow_note(b: DocBuilder) -> str:
    if b.facts.escrow < 0:
        return b.pick([" (shortage)", " (negative balance)", " (overdrawn)", " - escrow shortage"])
    return ""


# ---------------------------------------------------------------- payoff letter

_PAYOFF_OPENERS = (
    "In response to your request, we are providing the following payoff information for the loan referenced above.",
    "As requested, please find below the amount required to pay your mortgage loan in full.",
    "Thank you for your payoff request. The figures below are valid through {gt}.",
    "This letter confirms the total amount needed to satisfy the loan referenced above.",
    "We received a request for a payoff quote on the above loan. The payoff figures are as follows.",
    "Per the request of your title company, we have prepared the payoff figures shown below.",
    "You recently asked for the amount needed to pay off your mortgage. Here is that information.",
    "Pursuant to your authorization, the following payoff statement is provided.",
)

_PAYOFF_SENTENCES = (
    "The total amount required to pay off this loan is {payoff} if funds are received on or before {gt}.",
    "To pay this loan in full through {gt}, please remit {payoff}.",
    "Total payoff amount good through {gt}: {payoff}.",
    "Your payoff amount, calculated through {gt}, is {payoff}.",
    "The amount needed to satisfy the loan as of {gt} is {payoff}.",
    "Funds in the amount of {payoff} must be received by {gt} to release the lien.",
)

_NO_PAYOFF_SENTENCES = (
    "We are unable to provide payoff figures at this time because the loan is in an active modification review. "
    "Please contact us for updated figures.",
    "A payoff quote cannot be issued until the authorization form enclosed with this letter is signed and returned.",
    "Payoff figures will be sent separately once the pending disbursement has posted.",
)


def payoff_letter(b: DocBuilder) -> str:
    f = b.facts
    gt = b.date(f.good_through)
    with_breakdown = b.has("payoff_amount") and b.chance(0.5)
    if b.has("payoff_amount"):
        # With a breakdown table the total must add up, so no rounded forms.
        payoff = b.payoff(lossy=not with_breakdown)
        payoff_text = b.pick(_PAYOFF_SENTENCES, key="payoff_sentence").format(payoff=payoff, gt=gt)
    else:
        payoff_text = b.pick(_NO_PAYOFF_SENTENCES, key="payoff_sentence")
    body = [payoff_text]
    if with_breakdown:
        body.append(_payoff_breakdown(b, gt))
    optional = []
    if b.has("interest_rate"):
        optional.append(
            b.pick(
                [
                    "Interest accrues at the note rate of {rate}, or {diem} per day, after {gt}.",
                    "Your loan's current interest rate is {rate}.",
                    "Please note the interest rate on this loan is {rate} (APR {apr}).",
                    "If funds arrive after {gt}, add {diem} per day in interest (note rate {rate}).",
                ]
            ).format(rate=b.rate(), diem=b.money(f.per_diem, "formal"), gt=gt, apr=b.pct(f.apr))
        )
    elif b.chance(0.5):
        optional.append(f"Per diem interest after {gt}: {b.money(f.per_diem, 'formal')}.")
    if b.has("escrow_balance"):
        optional.append(
            b.pick(
                [
                    "Any remaining balance in your escrow account, currently {escrow}, will be refunded "
                    "within 30 days.",
                    "Your escrow balance of {escrow}{note} is not reflected in the total above.",
                    "Escrow balance at the time of this quote: {escrow}{note}.",
                    "The escrow account currently holds {escrow}{note}; it will be reconciled after payoff.",
                ]
            ).format(escrow=b.escrow(), note=_escrow_note(b))
        )
    if b.has("next_due_date"):
        optional.append(
            b.pick(
                [
                    "If the loan is not paid off by {gt}, please continue to make your regular payments; "
                    "your next payment of {monthly} is due {due}.",
                    "Your next scheduled payment is due {due}.",
                    "Please do not stop making payments until the loan is paid in full. "
                    "The next installment is due {due}.",
                ]
            ).format(gt=gt, monthly=b.money(f.monthly_payment, "formal"), due=b.due_date(yearless_ok=True))
        )
    if b.chance(0.5):
        optional.append(_wire_instructions(b))
    body.extend(b.shuffled(optional + parts.extra_paragraphs(b, 1)))
    header = [parts.letterhead(b), b.anchor_date("formal"), b.borrower_block()]
    refs = [parts.loan_reference(b), parts.property_reference(b) if b.chance(0.6) else None]
    subject = b.pick(
        ["RE: Payoff Quote", "Re: Payoff Statement", "Subject: Loan Payoff Figures", "RE: Request for Payoff"],
        key="subject",
    )
    return join_sections(
        [
            *header,
            join_sections([subject, *refs], "\n"),
            parts.salutation(b),
            b.pick(_PAYOFF_OPENERS, key="opener").format(gt=gt),
            *body,
            parts.closing(b),
            parts.disclaimers(b),
        ]
    )


def _payoff_breakdown(b: DocBuilder, gt: str) -> str:
    f = b.facts
    rows = [
        (parts.label(b, "principal"), b.money(f.principal, "table")),
        (f"Interest from {b.date(f.prior_due, 'table')} to {gt}", b.money(f.accrued_interest, "table")),
    ]
    rows += [(name, b.money(amount, "table")) for name, amount in f.fees.items() if amount]
    rows.append((parts.label(b, "payoff"), b.payoff("table")))
    return table(b, rows, key="breakdown")


def _wire_instructions(b: DocBuilder) -> str:
    f = b.facts
    reference = b.last4("full") if b.has("account_last4") and b.chance(0.5) else f.borrower
    # Receiving banks that are not servicers in our list, so a bank name here never looks like the answer.
    bank = b.pick(["Bank of New York Mellon", "Citibank N.A.", "Comerica Bank", "KeyBank N.A.", "BMO Bank N.A."])
    return (
        f"{b.pick(['Wire instructions', 'Wiring Instructions', 'Remit wired funds to'])}:\n{bank}\n"
        f"ABA/Routing: {f.routing}\nAccount: {f.reference}{f.routing[:3]}\nReference: {reference}"
    )


# ---------------------------------------------------------------- payoff statement (tabular)


def payoff_statement(b: DocBuilder) -> str:
    f = b.facts
    title = b.pick(
        [
            "PAYOFF STATEMENT",
            "Payoff Quote",
            "MORTGAGE PAYOFF STATEMENT",
            "Payoff Calculation",
            "Statement of Amount Due to Pay Loan in Full",
        ],
        key="title",
    )
    head_rows = [(parts.label(b, "statement_date"), b.anchor_date("table")), ("Borrower", f.borrower)]
    if b.has("account_last4"):
        head_rows.append((b.pick(["Loan Number", "Loan No.", "Account"]), b.last4()))
    head_rows.append((parts.label(b, "good_through"), b.date(f.good_through, "table")))
    rows = [
        (parts.label(b, "principal"), b.money(f.principal, "table")),
        (parts.label(b, "interest"), b.money(f.accrued_interest, "table")),
    ]
    rows += [(name, b.money(amount, "table")) for name, amount in f.fees.items() if amount or b.chance(0.3)]
    if b.has("escrow_balance"):
        rows.append((parts.label(b, "escrow") + _escrow_note(b), b.escrow("table")))
    if b.has("payoff_amount"):
        rows.append((parts.label(b, "payoff"), b.payoff("table", lossy=False)))
    else:
        rows.append(("Total", "unavailable - contact Payoff Dept."))
    info_rows = [("Per Diem", b.money(f.per_diem, "table"))]
    if b.has("interest_rate"):
        info_rows.append((parts.label(b, "rate"), b.rate("table")))
    if b.has("next_due_date"):
        info_rows.append((parts.label(b, "due"), b.due_date("table")))
    if b.chance(0.4):
        info_rows.append(("Last Payment Received", b.date(f.last_paid, "table")))
    info_rows = b.shuffled(info_rows)
    sender = parts.letterhead(b) if b.chance(0.7) else (b.servicer(upper=b.chance(0.5)) if b.has("servicer") else None)
    note = b.pick(
        [
            "Amounts are good through the date shown. Add the per diem for each day after that date.",
            "Figures subject to final verification. Certified funds or wire only.",
            "Any overpayment will be refunded to the borrower within 20 business days.",
            None,
        ]
    )
    return join_sections(
        [
            sender,
            title,
            table(b, head_rows, key="head"),
            table(b, rows, key="rows"),
            table(b, info_rows, key="info"),
            note,
            parts.disclaimers(b, 1),
        ]
    )


# ---------------------------------------------------------------- monthly statement


def monthly_statement(b: DocBuilder) -> str:
    f = b.facts
    interest_part = round(f.principal * f.rate / 1200, 2)
    principal_part = round(max(f.monthly_pi - interest_part, 12.0), 2)
    title = b.pick(
        [
            "Mortgage Statement",
            "MONTHLY MORTGAGE STATEMENT",
            "Billing Statement",
            "Your Monthly Statement",
            "Home Loan Statement",
        ],
        key="title",
    )
    top = [(parts.label(b, "statement_date"), b.anchor_date("table"))]
    if b.has("account_last4"):
        top.append((b.pick(["Account Number", "Loan Number", "Loan #"]), b.last4()))
    if b.has("next_due_date"):
        top.append((parts.label(b, "due"), b.due_date("table", yearless_ok=False)))
    top.append((b.pick(["Amount Due", "Total Amount Due", "Payment Amount"]), b.money(f.monthly_payment, "table")))
    late_date = f.next_due + dt.timedelta(days=15)
    late_fee = b.money(f.late_fee, "table")
    late = f"If payment is received after {b.date(late_date, 'table')}, a {late_fee} late fee will be charged."
    account = [(parts.label(b, "principal"), b.money(f.principal, "table"))]
    if b.has("interest_rate"):
        account.append((parts.label(b, "rate"), b.rate("table")))
    if b.has("escrow_balance"):
        account.append((parts.label(b, "escrow") + _escrow_note(b), b.escrow("table")))
    account.append(("Prepayment Penalty", b.pick(["None", "No", "N/A"])))
    if b.has("payoff_amount"):
        account.append((f"Estimated Payoff (as of {b.date(f.good_through, 'table')})", b.payoff("table", lossy=False)))
    account = b.shuffled(account)
    explanation = [
        ("Principal", b.money(principal_part, "table")),
        ("Interest", b.money(interest_part, "table")),
        (b.pick(["Escrow (Taxes and Insurance)", "Escrow", "Escrow Payment"]), b.money(f.escrow_monthly, "table")),
        (parts.label(b, "monthly"), b.money(f.monthly_payment, "table")),
    ]
    sections = [
        parts.letterhead(b) if b.chance(0.6) else (b.servicer() if b.has("servicer") else None),
        title,
        b.borrower_block() if b.chance(0.6) else None,
        table(b, top, key="top"),
        late,
        b.pick(["Account Information", "ACCOUNT INFORMATION", "Loan Details"])
        + "\n"
        + table(b, account, key="account"),
        b.pick(["Explanation of Amount Due", "Payment Breakdown", "EXPLANATION OF AMOUNT DUE"])
        + "\n"
        + table(b, explanation, key="explain"),
    ]
    if b.chance(0.5):
        paid_last = b.money(f.monthly_payment, "table")
        ytd = b.money(round(f.monthly_payment * f.prior_due.month, 2), "table")
        sections.append(f"Past Payments Breakdown\nPaid Last Month: {paid_last}\nPaid Year to Date: {ytd}")
    if b.chance(0.4):
        sections.append(
            "Transaction Activity\n"
            f"{b.date(f.last_paid, 'table')}  Payment Received  {b.money(f.monthly_payment, 'table')}"
        )
    sections.extend(parts.extra_paragraphs(b, 2))
    sections.append(parts.disclaimers(b, 2))
    return join_sections(sections)


# ---------------------------------------------------------------- escrow analysis


def escrow_analysis(b: DocBuilder) -> str:
    f = b.facts
    tax = round(f.escrow_monthly * 12 * b.rng.uniform(0.55, 0.75), 2)
    insurance = round(f.escrow_monthly * 12 - tax, 2)
    low_point = round(abs(f.escrow) * b.rng.uniform(0.1, 0.6), 2)
    cushion = round(f.escrow_monthly * 2, 2)
    new_escrow = round(f.escrow_monthly * b.rng.uniform(0.95, 1.15), 2)
    title = b.pick(
        [
            "ANNUAL ESCROW ACCOUNT DISCLOSURE STATEMENT",
            "Escrow Analysis",
            "Your Annual Escrow Review",
            "Escrow Account Analysis Statement",
        ],
        key="title",
    )
    opener = b.pick(
        [
            "We have completed the annual analysis of your escrow account.",
            "Each year we review your escrow account to make sure there is enough to pay your taxes and insurance.",
            "This statement shows the results of your escrow analysis and your new monthly payment.",
            "Federal law requires us to review your escrow account once a year. Here are the results.",
        ],
        key="opener",
    )
    body = [opener]
    if b.has("escrow_balance"):
        body.append(
            b.pick(
                [
                    "Your current escrow balance is {escrow}{note}.",
                    "As of the analysis date, your escrow account balance was {escrow}{note}.",
                    "Current balance in your escrow account: {escrow}{note}.",
                ]
            ).format(escrow=b.escrow("formal", lossy=False), note=_escrow_note(b))
        )
    body.append(
        b.pick(
            [
                f"Your projected low point is {b.money(low_point, 'formal')}; "
                f"the required minimum balance is {b.money(cushion, 'formal')}.",
                f"The lowest projected balance in the coming year is {b.money(low_point, 'formal')}.",
                f"Required cushion (two months of escrow): {b.money(cushion, 'formal')}.",
            ]
        )
    )
    payment_rows = [
        ("Principal & Interest", b.money(f.monthly_pi, "table")),
        ("New Escrow Payment", b.money(new_escrow, "table")),
        ("New Total Payment", b.money(round(f.monthly_pi + new_escrow, 2), "table")),
    ]
    if b.has("next_due_date"):
        body.append(
            b.pick(
                [
                    "Your new payment begins with your next payment, due {due}.",
                    "The new payment is effective with the payment due {due}.",
                    "Next payment due {due}.",
                ]
            ).format(due=b.due_date("formal"))
        )
    body.append(table(b, payment_rows, key="payment"))
    disbursements = [
        (b.pick(["County Property Tax", "Property Taxes", "Real Estate Tax"]), b.money(tax, "table")),
        (b.pick(["Hazard Insurance", "Homeowners Insurance", "Homeowner's Ins."]), b.money(insurance, "table")),
    ]
    body.append("Anticipated annual disbursements:\n" + table(b, disbursements, key="disb"))
    if b.has("interest_rate"):
        body.append(f"Interest rate on your loan: {b.rate()} (unchanged by this analysis).")
    if b.has("payoff_amount"):
        body.append(f"Payoff amount as of {b.date(f.good_through)}: {b.payoff()}.")
    ref = parts.loan_reference(b)
    return join_sections(
        [
            parts.letterhead(b),
            b.anchor_date("formal"),
            b.borrower_block() if b.chance(0.5) else None,
            join_sections([title, ref], "\n"),
            *body,
            *parts.extra_paragraphs(b, 1),
            parts.closing(b) if b.chance(0.5) else None,
            parts.disclaimers(b, 1),
        ]
    )


# ---------------------------------------------------------------- servicing transfer


def transfer_letter(b: DocBuilder) -> str:
    f = b.facts
    effective = f.statement_date + dt.timedelta(days=b.rng.randint(3, 10))
    stop_date = effective - dt.timedelta(days=1)
    named = b.has("servicer")
    new = b.servicer() if named else "your new servicer"
    old = b.pick(f.prior_servicer.variants) if named else "your previous servicer"
    title = b.pick(
        [
            "NOTICE OF SERVICING TRANSFER",
            "Welcome to {new}!",
            "Important Information About Your Mortgage",
            "Notice of Transfer of Servicing Rights",
            "Your loan has a new home",
        ],
        key="title",
    ).format(new=new)
    opener = b.pick(
        [
            "The servicing of your mortgage loan is being transferred, effective {eff}, from {old} to {new}.",
            "We are pleased to welcome you. Effective {eff}, {new} will service your mortgage loan, "
            "which was previously serviced by {old}.",
            "Your loan has been transferred to {new}. {old} will no longer collect your payments after {stop}.",
            "This notice is to inform you that the right to collect payments on your mortgage loan "
            "moves from {old} to {new} on {eff}.",
        ],
        key="opener",
    ).format(eff=b.date(effective), old=old, new=new, stop=b.date(stop_date))
    body = [
        opener,
        "The transfer does not affect any term or condition of the mortgage instrument, "
        "other than terms directly related to the servicing of your loan.",
    ]
    if b.has("account_last4"):
        old_number = f"****{f.other_loan_last4}" if b.chance(0.8) else f"ending in {f.other_loan_last4}"
        body.append(
            b.pick(
                [
                    "Your new loan number is {new}. Your old loan number ({old}) will no longer be used.",
                    "Previous loan number: {old}\nNew loan number: {new}",
                    "Please reference your new account number, {new}, on all payments.",
                ]
            ).format(new=b.last4(), old=old_number)
        )
    if b.has("next_due_date"):
        body.append(
            b.pick(
                [
                    "Your first payment to {new} is due {due}.",
                    "The next payment due {due} should be sent to {new}.",
                    "Payment due {due} and after must be sent to the new address below.",
                ]
            ).format(new=new, due=b.due_date())
        )
    if b.has("interest_rate"):
        body.append(
            f"Your interest rate of {b.rate()} and your monthly principal and interest payment "
            f"of {b.money(f.monthly_pi)} will not change."
        )
    if b.has("escrow_balance"):
        body.append(f"Your escrow balance of {b.escrow()}{_escrow_note(b)} will be transferred with the loan.")
    if b.has("payoff_amount"):
        body.append(f"For reference, the payoff amount as of {b.date(f.good_through)} is {b.payoff()}.")
    body.append(
        b.pick(
            [
                "Payments received by {old} within 60 days of the transfer date will not be treated as late.",
                "If you have questions, call {new} toll-free at {phone}.",
                "If you use automatic payments, you will need to enroll again with {new}.",
            ]
        ).format(old=old, new=new, phone=b.phone())
    )
    body += parts.extra_paragraphs(b, 2)
    return join_sections(
        [
            parts.letterhead(b),
            b.anchor_date("formal"),
            b.borrower_block(),
            title,
            parts.salutation(b),
            body[0],
            *b.shuffled(body[1:]),
            parts.closing(b),
            parts.disclaimers(b, 1),
        ]
    )


# ---------------------------------------------------------------- delinquency notice


def delinquency_notice(b: DocBuilder) -> str:
    f = b.facts
    days_late = max((f.statement_date - f.prior_due).days, 1)
    past_due = round(f.monthly_payment + f.late_fee, 2)
    cure_by = f.statement_date + dt.timedelta(days=b.rng.randint(10, 30))
    title = b.pick(
        [
            "NOTICE OF DELINQUENCY",
            "Your mortgage payment is past due",
            "PAST DUE NOTICE",
            "Reminder: Payment Not Received",
            "Late Payment Notice",
        ],
        key="title",
    )
    opener = b.pick(
        [
            "Our records show that we have not received your payment due {prior}.",
            "As of {today}, your loan is {days} days past due.",
            "We have not received the monthly payment that was due on {prior}.",
            "This is a reminder that your mortgage payment due {prior} remains unpaid.",
        ],
        key="opener",
    ).format(prior=b.date(f.prior_due), today=b.anchor_date(), days=days_late)
    amounts = (
        f"The total amount now due is {b.money(past_due)}, which includes a late charge of {b.money(f.late_fee)}. "
        f"Please pay by {b.date(cure_by)} to avoid further fees."
    )
    body = [opener, amounts]
    if b.has("next_due_date"):
        body.append(
            b.pick(
                [
                    "Your next regular payment of {monthly} is due on {due}.",
                    "Next Payment Due: {due}",
                    "Please note that another payment will come due {due}.",
                ]
            ).format(monthly=b.money(f.monthly_payment), due=b.due_date())
        )
    if b.has("escrow_balance"):
        body.append(f"Your escrow balance is {b.escrow()}{_escrow_note(b)}.")
    if b.has("interest_rate"):
        body.append(f"Interest continues to accrue at {b.rate()}.")
    if b.has("payoff_amount"):
        body.append(f"The amount to pay the loan in full is {b.payoff()}.")
    body.append(
        b.pick(
            [
                "If you are experiencing financial difficulty, you may be eligible for assistance. "
                "Please call us at {phone}.",
                "If you have already sent your payment, please disregard this notice.",
                "Failure to bring your account current may result in negative credit reporting.",
            ]
        ).format(phone=b.phone())
    )
    return join_sections(
        [
            parts.letterhead(b),
            b.anchor_date("formal"),
            b.borrower_block(),
            join_sections([title, parts.loan_reference(b)], "\n"),
            parts.salutation(b),
            body[0],
            *b.shuffled(body[1:]),
            *parts.extra_paragraphs(b, 1),
            parts.closing(b),
            parts.disclaimers(b, 2),
        ]
    )
