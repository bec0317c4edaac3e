"""Informal documents: emails, call-center notes, chats, texts, voicemails, forwards, faxes."""

from __future__ import annotations

import datetime as dt

from tuneloop.demo.synth import noise, parts, styles_formal
from tuneloop.demo.synth.doc import DocBuilder

_GENERIC_DOMAINS = ("secure-message.net", "notifications-mail.com", "customer-portal.net", "mailer.servicing.io")
_OFF_TOPIC_ANSWERS = (
    "I have updated the mailing address on your account as requested.",
    "Your year-end tax form is available under Documents once you sign in.",
    "Automatic payments are set to draft on the date you selected; no action is needed.",
    "The hazard insurance declarations page you sent has been received and forwarded to our insurance unit.",
    "Unfortunately we cannot discuss the account with a third party until we receive a signed authorization.",
    "Your request for PMI removal has been forwarded to the appropriate department for review.",
    "I have reset your online access; you should receive a temporary password shortly.",
)


# A customer question that needs none of the fields, with the agent's answer.
_OFF_TOPIC_CHATS = (
    ("how do i change my mailing address", "I have updated the mailing address on your account as requested."),
    ("can i set up autopay", "Sure, I've sent you a link to enroll in automatic payments."),
    ("where do i find my 1098", "Your year-end tax form is available under Documents once you sign in."),
    ("i sent my insurance doc, did you get it?", "Yes, we received it and forwarded it to our insurance unit."),
    ("can i skip a payment", "I can't skip a payment, but I can send you information about assistance options."),
    ("i cant log in", "I have reset your online access; you should receive a temporary password shortly."),
    ("how do i remove pmi", "I've sent you the PMI removal request form and the requirements."),
)


def _join(sections: list[str | None], sep: str = "\n\n") -> str:
    return sep.join(s for s in sections if s)


def _ssn4(b: DocBuilder) -> str:
    digits = f"{b.rng.randint(0, 9999):04d}"
    return digits if digits != b.facts.last4 else f"{(int(digits) + 1) % 10000:04d}"


def _answer_sentences(b: DocBuilder, *, yearless_ok: bool) -> list[str]:
    """One sentence per present field, as a customer-service agent would write it."""
    f = b.facts
    gt = b.date(f.good_through)
    out = []
    if b.has("payoff_amount"):
        out.append(
            b.pick(
                [
                    "Your payoff amount good through {gt} is {payoff}.",
                    "The amount needed to pay the loan in full by {gt} is {payoff}.",
                    "As of today, your payoff would be {payoff} (good through {gt}).",
                    "Payoff: {payoff}, valid until {gt}.",
                ]
            ).format(gt=gt, payoff=b.payoff())
        )
    if b.has("escrow_balance"):
        out.append(
            b.pick(
                [
                    "Your current escrow balance is {escrow}.",
                    "The escrow account has {escrow} in it right now.",
                    "Escrow balance: {escrow}.",
                    "You currently have {escrow} in escrow for taxes and insurance.",
                ]
            ).format(escrow=b.escrow())
        )
    if b.has("next_due_date"):
        out.append(
            b.pick(
                [
                    "Your next payment is due {due}.",
                    "The next installment of {monthly} is due {due}.",
                    "Next due date: {due}.",
                    "We show your next payment due on {due}.",
                ]
            ).format(due=b.due_date(yearless_ok=yearless_ok), monthly=b.money(f.monthly_payment))
        )
    if b.has("interest_rate"):
        out.append(
            b.pick(
                [
                    "The interest rate on your loan is {rate}.",
                    "Your loan carries a fixed rate of {rate}.",
                    "Your note rate is {rate} (the APR shown on your disclosure was {apr}).",
                ]
            ).format(rate=b.rate(), apr=b.pct(f.apr))
        )
    return out


def _distractor_sentences(b: DocBuilder) -> list[str]:
    f = b.facts
    return [
        f"Your principal balance is {b.money(f.principal)}.",
        f"Your monthly payment is {b.money(f.monthly_payment)}.",
        f"The last payment we received was {b.money(f.monthly_payment)} on {b.date(f.last_paid)}.",
        f"Your case number for this request is {f.case_number}.",
    ]


def _agent_email_body(b: DocBuilder, *, yearless_ok: bool) -> str:
    f = b.facts
    greeting = b.pick(
        [f"Hi {f.borrower_first},", f"Dear {f.borrower}:", "Hello,", f"Good afternoon {f.borrower_first},"]
    )
    topic = (
        "your loan"
        if not b.has("account_last4")
        else f"your loan ending in {b.last4(b.pick(['bare', 'bare', 'stars', 'dots']))}"
    )
    opener = b.pick(
        [
            "Thank you for contacting {company} about {topic}.",
            "Thanks for reaching out regarding {topic}.",
            "I'm following up on your recent request about {topic}.",
            "Per our phone conversation, here is the information you asked for on {topic}.",
            "We received your message regarding {topic}.",
        ],
        key="opener",
    ).format(company=b.sender_name() if b.has("servicer") else "us", topic=topic)
    answers = _answer_sentences(b, yearless_ok=yearless_ok) or [b.pick(_OFF_TOPIC_ANSWERS)]
    extras = b.rng.sample(_distractor_sentences(b), b.rng.randint(0, 2))
    body = " ".join(b.shuffled(answers + extras)) if b.chance(0.5) else "\n".join(b.shuffled(answers + extras))
    closing = b.pick(
        [
            "Please let me know if you have any other questions.",
            "If there is anything else I can help with, just reply to this email.",
            "Have a great day!",
            "We appreciate your business.",
        ]
    )
    company = b.servicer() if b.has("servicer") else b.pick(["Customer Care", "Loan Servicing"])
    signature = b.pick(
        [f"{f.agent}\n{company}", f"{f.agent} | {company}", f"- {f.agent}, {company}", f"{company} Customer Care Team"]
    )
    if b.chance(0.4):
        signature += f"\n{b.phone()}"
    return _join([greeting, opener, body, closing, signature])


def _email_headers(b: DocBuilder, subject: str, sender: str, recipient: str) -> str:
    return f"From: {sender}\nTo: {recipient}\nDate: {b.anchor_date(b.pick(['formal', 'table']))}\nSubject: {subject}"


def _agent_address(b: DocBuilder) -> str:
    f = b.facts
    domain = f.servicer.domain if b.has("servicer") else b.pick(_GENERIC_DOMAINS)
    return b.pick(
        [f"{f.agent} <{f.agent.lower()}@{domain}>", f"Customer Care <noreply@{domain}>", f"servicing@{domain}"]
    )


def _borrower_address(b: DocBuilder) -> str:
    f = b.facts
    provider = b.pick(["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "aol.com"])
    return f"{f.borrower_first.lower()}.{f.borrower_last.lower()}{b.rng.randint(1, 99)}@{provider}"


# ---------------------------------------------------------------- customer-service email


def service_email(b: DocBuilder) -> str:
    subject = b.pick(
        [
            "RE: Payoff request",
            "RE: Question about my loan",
            "Your recent inquiry",
            "RE: escrow question",
            f"Case {b.facts.case_number}: information requested",
            "Re: Loan information",
        ],
        key="subject",
    )
    with_headers = b.chance(0.65)
    headers = _email_headers(b, subject, _agent_address(b), _borrower_address(b)) if with_headers else None
    return _join(
        [headers, _agent_email_body(b, yearless_ok=with_headers), parts.disclaimers(b, 1) if b.chance(0.4) else None]
    )


# ---------------------------------------------------------------- call-center notes

_ABBREVIATED_TOPICS = {
    "payoff_amount": ("PO quote", "payoff", "PO figs"),
    "escrow_balance": ("esc bal", "escrow", "esc bal q"),
    "next_due_date": ("pmt due dt", "NDD", "when next pmt due"),
    "interest_rate": ("rate", "int rate", "refi / rate q"),
}


def call_notes(b: DocBuilder) -> str:
    f = b.facts
    initials = f"{f.agent[0]}{b.rng.choice('ABCDEFGHJKLMNPRSTW')}"
    header = b.pick(
        [
            "CALL NOTES - {date}",
            "{date} {time} {initials} INB CALL",
            "Contact History {date}",
            "[{date} {time}] notes by {initials}",
            "Activity log {date}",
        ],
        key="header",
    ).format(date=b.anchor_date("table"), time=f"{b.rng.randint(8, 19)}:{b.rng.randint(0, 59):02d}", initials=initials)
    topics = [b.pick(options) for name, options in _ABBREVIATED_TOPICS.items() if b.has(name)] or [
        b.pick(["gen'l inquiry", "ins claim ck", "addr change", "autopay setup", "1098 req"])
    ]
    who = b.pick(["B1", "Brwr", "Borrower", "CB2 (spouse)", "3rd pty (title co)"])
    items = [
        f"{who} {f.borrower_last.upper()} called re {', '.join(topics)}",
        f"{b.pick(['Verified', 'Auth', 'Verif'])} w/ SSN4 {_ssn4(b)} + DOB",
    ]
    facts = []
    if b.has("payoff_amount"):
        facts.append(
            b.pick(["PO amt {v} gd thru {gt}", "quoted PO {v} thru {gt}", "payoff {v}", "PO {v}"]).format(
                v=b.payoff(), gt=b.date(f.good_through)
            )
        )
    if b.has("escrow_balance"):
        facts.append(b.pick(["esc bal {v}", "escrow {v}", "esc acct @ {v}", "ESC BAL {v}"]).format(v=b.escrow()))
    if b.has("next_due_date"):
        facts.append(
            b.pick(["NDD {v}", "next pmt due {v}", "due {v}", "nxt due {v}"]).format(v=b.due_date(yearless_ok=True))
        )
    if b.has("interest_rate"):
        facts.append(b.pick(["rate {v}", "int rt {v}", "note rate {v}", "IR {v}"]).format(v=b.rate()))
    if b.has("account_last4"):
        facts.append(
            b.pick(["acct {v}", "ln# {v}", "loan {v}"]).format(v=b.last4(b.pick(["dots", "bare", "stars", "full"])))
        )
    if b.has("servicer"):
        facts.append(
            b.pick(["svc'd by {s}", "{s} loan", "xfer from {p} to {s} last yr", "boarded at {s}"]).format(
                s=b.servicer(), p=b.pick(f.prior_servicer.variants)
            )
        )
    distractors = [
        f"UPB {b.money(f.principal)}",
        f"P&I {b.money(f.monthly_pi)}",
        f"LC {b.money(f.late_fee)} assessed",
        f"last pmt rec'd {b.date(f.last_paid)}",
        f"cb# {b.phone()}",
        f"ref# {f.reference}",
        f"per diem {b.money(f.per_diem)}",
    ]
    facts += b.rng.sample(distractors, b.rng.randint(1, 3))
    outcome = b.pick(
        [
            "Sent PO stmt via email.",
            "Caller satisfied, no f/u needed.",
            "LVM.",
            f"Tkt {f.case_number} opened.",
            "Adv'd brwr of grace period.",
            "Transferred to escrow dept.",
            "Will call back w/ figures.",
        ]
    )
    items += [*b.shuffled(facts), outcome]
    sep = b.pick([" / ", "; ", "\n- ", ". ", "\n"], key="separator")
    text = sep.join(items)
    return _join([header, noise.shout(text) if b.chance(0.15) else text], "\n")


# ---------------------------------------------------------------- chat transcript


def chat_transcript(b: DocBuilder) -> str:
    f = b.facts
    has_header = b.chance(0.6)
    header = (
        b.pick(["Chat started {d}", "Live Chat Transcript - {d}", "Conversation with Support ({d})"]).format(
            d=b.anchor_date("table")
        )
        if has_header
        else None
    )
    agent = b.pick([f"{f.agent}", f"Agent {f.agent}", "Support", f"{f.agent} (Support)"], key="agent_label")
    customer = b.pick([f.borrower_first, "Customer", "You", "Visitor", f.borrower], key="customer_label")
    stamp = b.chance(0.5)
    hour, minute = b.rng.randint(8, 20), b.rng.randint(0, 45)
    turns: list[tuple[str, str]] = []
    company = b.servicer() if b.has("servicer") else None
    greetings = [
        "Hi, thanks for contacting {c}! How can I help you today?",
        "Hello, my name is {a}. What can I do for you?",
        "Welcome to {c} chat support. How may I assist?",
        "Hi there! You're chatting with {a}.",
    ]
    if company is None:
        greetings = [g for g in greetings if "{c}" not in g] + ["Thanks for contacting us! How can I help?"]
    greeting = b.pick(greetings, key="greeting")
    turns.append((agent, greeting.format(c=company, a=f.agent)))
    wanted = [name for name in ("payoff_amount", "escrow_balance", "next_due_date", "interest_rate") if b.has(name)]
    ask = {
        "payoff_amount": ["what's my payoff", "i need a payoff amount", "how much to pay it off"],
        "escrow_balance": ["how much is in my escrow", "whats my escrow balance", "escrow balance?"],
        "next_due_date": ["when is my next payment due", "when's the next payment", "due date?"],
        "interest_rate": ["what rate am i paying", "what is my interest rate", "is my rate still the same?"],
    }
    off_topic_question, off_topic_answer = b.pick(_OFF_TOPIC_CHATS)
    request = " and ".join(b.pick(ask[name]) for name in wanted) if wanted else off_topic_question
    turns.append((customer, noise.add_typos(b.rng, request, 0.1)))
    turns.append((agent, "I can help with that. Can you verify the last 4 of your SSN?"))
    turns.append((customer, _ssn4(b)))
    if b.has("account_last4"):
        turns.append(
            (
                agent,
                b.pick(
                    [
                        "Thank you. I see the loan ending in {n}.",
                        "Thanks! Pulling up account {n} now.",
                        "Verified. Loan number {n}.",
                    ]
                ).format(n=b.last4(b.pick(["bare", "stars", "dots"]))),
            )
        )
    answers = _answer_sentences(b, yearless_ok=has_header)
    turns += [(agent, sentence) for sentence in answers] or [(agent, off_topic_answer)]
    if b.chance(0.3) and b.has("payoff_amount"):
        turns.append(
            (
                customer,
                noise.add_typos(
                    b.rng, f"hm i thought it was closer to {b.money(round(f.principal * 0.97, -3), 'informal')}", 0.1
                ),
            )
        )
        turns.append((agent, "The figure I gave includes accrued interest and fees through the good-through date."))
    turns.append((customer, b.pick(["ok thanks", "great thank you!", "thx", "ok", "perfect, thanks"])))
    goodbyes = ["You're welcome! Have a great day.", "Anything else I can help with?", "Glad I could help."]
    if company is not None and "{c}" not in greeting:
        goodbyes = ["Thank you for choosing {c}!", "Thanks for being a {c} customer. Have a great day!"]
    turns.append((agent, b.pick(goodbyes).format(c=company)))
    lines = []
    for index, (speaker, message) in enumerate(turns):
        prefix = f"[{hour}:{minute + index:02d}] " if stamp else ""
        lines.append(f"{prefix}{speaker}: {message}")
    footer = b.pick(["Chat ended.", "--- End of transcript ---", None, None])
    return _join([header, "\n".join(lines), footer], "\n")


# ---------------------------------------------------------------- SMS alerts


def sms_alert(b: DocBuilder) -> str:
    f = b.facts
    sender = b.servicer(canonical=b.chance(0.3)) if b.has("servicer") else b.pick(["ALERT", "Mortgage Alert", "Msg"])
    acct = ""
    if b.has("account_last4"):
        acct = b.pick([" for loan ending {n}", " (acct {n})", " Loan {n}", " for account {n}"]).format(
            n=b.last4(b.pick(["bare", "dots", "stars", "xs_lower"]))
        )
    messages = []
    if b.has("next_due_date"):
        messages.append(
            b.pick(
                [
                    "{s}: Your payment of {m} is due {d}{a}. Reply STOP to opt out.",
                    "{s} reminder: pmt of {m} due {d}{a}.",
                    "{s}: Payment due {d}{a}. Pay in app or call {p}.",
                    "{s}: Heads up! {m} will be drafted on {d}{a}.",
                    "Reminder from {s}: your mortgage payment{a} is due {d}. Amount: {m}",
                ],
                key="due_message",
            ).format(s=sender, m=b.money(f.monthly_payment), d=b.due_date(), a=acct, p=b.phone())
        )
    else:
        messages.append(
            f"{sender}: We received your payment of {b.money(f.monthly_payment)} "
            f"on {b.date(f.last_paid)}{acct}. Thank you!"
        )
    if b.has("payoff_amount"):
        messages.append(
            f"{sender}: Your payoff quote is ready. {b.payoff()} good through {b.date(f.good_through)}{acct}."
        )
    if b.has("escrow_balance"):
        messages.append(
            f"{sender}: Escrow analysis complete. Escrow balance: {b.escrow()}. See details in your account."
        )
    if b.has("interest_rate"):
        messages.append(
            f"{sender}: Rates have changed! Your current rate is {b.rate()}. "
            "Tap to see if a refinance could save you money."
        )
    stamps = b.pick(["time", "date", "none"], key="stamps")
    lines = []
    for message in b.shuffled(messages):
        if stamps == "time":
            lines.append(
                f"{b.pick(['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'])} "
                f"{b.rng.randint(7, 20)}:{b.rng.randint(0, 59):02d}\n{message}"
            )
        elif stamps == "date":
            lines.append(f"{b.date(f.statement_date - dt.timedelta(days=b.rng.randint(0, 9)), 'table')}\n{message}")
        else:
            lines.append(message)
    head = b.pick([f"Text Message from {b.rng.randint(20000, 99999)}", "SMS", None], key="head")
    return _join([head, *lines], "\n\n")


# ---------------------------------------------------------------- voicemail transcript


def _filler(b: DocBuilder) -> str:
    return b.pick(["", "", "um, ", "uh ", "so "])


def voicemail(b: DocBuilder) -> str:
    f = b.facts
    who = (
        b.servicer()
        if b.has("servicer")
        else b.pick(["your mortgage company", "the loan servicing department", "customer care"])
    )
    parts_ = [
        b.pick(
            [
                "Hi, this message is for {name}. This is {agent} calling from {who}",
                "Hello, this is {agent} with {who}, calling for {name}",
                "Good morning, this message is for {first}. My name is {agent} and I'm calling from {who}",
                "Hey {first}, it's {agent} over at {who}",
                "This is an important message for {name} from {who}",
            ],
            key="opener",
        ).format(name=f.borrower, first=f.borrower_first, agent=f.agent, who=who)
    ]
    if b.has("account_last4"):
        parts_[-1] += f" {_filler(b)}regarding your mortgage account ending in {b.last4(b.pick(['bare', 'spaced']))}"
    parts_[-1] += "."
    if b.has("payoff_amount"):
        parts_.append(
            f"{_filler(b)}I'm calling about the payoff you requested. "
            f"The amount good through {b.date(f.good_through, 'spoken')} is {b.payoff('spoken')}."
        )
    if b.has("escrow_balance"):
        parts_.append(f"Your escrow balance right now is {b.escrow('spoken')}.")
    if b.has("next_due_date"):
        # Year-less forms are allowed; a document without a dated header is rejected and redrawn.
        parts_.append(
            f"{_filler(b)}Just a reminder that your next payment is due {b.due_date('spoken', yearless_ok=True)}."
        )
    if b.has("interest_rate"):
        parts_.append(f"And the rate on the loan is {b.rate('spoken')}.")
    if len(parts_) == 1:
        parts_.append(
            b.pick(
                [
                    "We have a question about the insurance document you sent.",
                    "We need to verify some information on your account.",
                    "This is a courtesy call about your account.",
                ]
            )
        )
    phone = b.phone()
    parts_.append(
        b.pick(
            [
                f"Please give us a call back at {phone}.",
                f"You can reach me at {phone}, that's {phone}.",
                f"Call us at {phone}, reference number {f.reference}.",
            ]
        )
    )
    parts_.append(
        b.pick(
            [
                "Thank you, have a good day.",
                "Thanks, bye.",
                "If you've already taken care of this, please disregard.",
                "Again, this is {a}. Talk soon.",
                "We're here Monday through Friday, eight to eight.",
            ],
            key="closing",
        ).format(a=f.agent)
    )
    header = b.pick(
        [
            "Voicemail from {p} ({s}s)",
            "Transcription (automated, may contain errors):",
            "New voicemail - {p}",
            "VOICEMAIL {d}",
            "{d} - Voicemail from {p}",
            "Received {d}, {s} sec\nTranscript:",
        ],
        key="header",
    ).format(p=phone, s=b.rng.randint(25, 95), d=b.anchor_date("table"))
    body = " ".join(parts_)
    if b.chance(0.4):
        body = noise.speech_to_text(body)
    return f"{header}\n{body}"


# ---------------------------------------------------------------- borrower forwarding a servicer email


def forwarded_email(b: DocBuilder) -> str:
    f = b.facts
    who = b.pick(["Dana", "Mike", "Jen", "Mom", "Steve", "Title team", "Rachel", "Counselor"])
    source = (
        b.servicer()
        if b.has("servicer") and b.chance(0.4)
        else b.pick(["my servicer", "the mortgage company", "the bank"])
    )
    note = [
        b.pick([f"Hi {who},", f"{who} -", "Hey,", "Hello,", ""], key="note_greeting"),
        b.pick(
            [
                "see below from {s}.",
                "forwarding what {s} sent me.",
                "here's the email from {s}, can you check if this looks right?",
                "FYI - this came in from {s} today.",
                "for the refi paperwork, see below",
            ],
            key="note",
        ).format(s=source),
    ]
    if b.chance(0.4):
        note.append(
            b.pick(
                [
                    "This is for the house loan, not the HELOC ending in {o}.",
                    "(our old loan number was ...{o} before they transferred it)",
                    "Ignore the car loan acct {o} I sent last week, this is the mortgage.",
                ]
            ).format(o=f.other_loan_last4)
        )
    note.append(b.pick(["Thanks!", "thx", f"- {f.borrower_first}", f.borrower_first, ""]))
    note_text = noise.add_typos(b.rng, "\n".join(n for n in note if n), 0.06)
    divider = b.pick(
        ["---------- Forwarded message ---------", "-----Original Message-----", "Begin forwarded message:"],
        key="divider",
    )
    subject = b.pick(["Payoff information", "Your loan information", "RE: Request", "Escrow update", "Account update"])
    headers = _email_headers(b, subject, _agent_address(b), _borrower_address(b))
    inner = _agent_email_body(b, yearless_ok=True)
    quoted = None
    if b.chance(0.35):
        question = b.pick(
            [
                "Can you send my payoff and escrow balance?",
                "Hi, what do I owe and when is the next payment due?",
                "Please send updated figures.",
            ]
        )
        asked_on = b.date(f.statement_date - dt.timedelta(days=b.rng.randint(1, 6)))
        quoted = f"> On {asked_on}, {f.borrower} wrote:\n> {question}"
    return _join([note_text, divider, headers, inner, quoted])


# ---------------------------------------------------------------- scanned fax (OCR noise added by the generator)


def scanned_fax(b: DocBuilder) -> str:
    f = b.facts
    body_style = b.pick(
        [
            styles_formal.payoff_letter,
            styles_formal.payoff_statement,
            styles_formal.monthly_statement,
            styles_formal.escrow_analysis,
        ],
        key="fax_body",
    )
    fax_number = f"({b.rng.randint(201, 989)}) {b.rng.randint(200, 999)}-{b.rng.randint(1000, 9999)}"
    sent = f.statement_date + dt.timedelta(days=b.rng.randint(0, 3))
    header = b.pick(
        [
            "{d} {t} FROM: {fax} TO: {to} P. 001/00{n}",
            "FAX  {d}  {t}  {fax}  PAGE 1/{n}",
            "Received: {d} {t}   From: {fax}   Pages: {n}",
        ],
        key="fax_header",
    ).format(
        d=b.date(sent, "table"),
        t=f"{b.rng.randint(7, 18)}:{b.rng.randint(0, 59):02d}",
        fax=fax_number,
        to=b.rng.randint(2000000000, 9999999999),
        n=b.rng.randint(2, 4),
    )
    footer = b.pick(["*** END OF TRANSMISSION ***", "PAGE 1", "CONFIDENTIAL: intended only for the addressee.", None])
    return _join([header, body_style(b), footer], "\n")
