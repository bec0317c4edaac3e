"""Word pools for the synthetic documents: servicers, people, places.

Servicers are realistic US mortgage servicers. ``canonical`` is the gold answer; ``variants``
are the ways documents write the name (case, legal suffixes, short forms). Every variant keeps
the canonical name's distinctive word (its longest alphanumeric token), so a reader can always
tie the text back to the gold.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Servicer:
    canonical: str
    variants: tuple[str, ...]
    domain: str
    phone: str


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _servicer(canonical: str, variants: list[str], domain: str, phone: str) -> Servicer:
    return Servicer(canonical, (canonical, canonical.upper(), *variants), domain, phone)


SERVICERS: tuple[Servicer, ...] = (
    _servicer("Rocket Mortgage", ["Rocket Mortgage, LLC", "rocket mortgage"], "rocketmortgage.com", "800-508-0944"),
    _servicer("Mr. Cooper", ["Mr Cooper", "MR COOPER", "Mr. Cooper Group"], "mrcooper.com", "833-685-2565"),
    _servicer(
        "PennyMac", ["Pennymac Loan Services, LLC", "Pennymac", "PENNYMAC LOAN SVCS"], "pennymac.com", "800-777-4001"
    ),
    _servicer(
        "Freedom Mortgage", ["Freedom Mortgage Corporation", "Freedom Mtg"], "freedommortgage.com", "855-690-5900"
    ),
    _servicer(
        "Wells Fargo Home Mortgage",
        ["Wells Fargo", "WELLS FARGO HOME MTG", "Wells Fargo Bank, N.A."],
        "wellsfargo.com",
        "800-357-6675",
    ),
    _servicer(
        "Chase Home Lending", ["Chase", "JPMorgan Chase Bank, N.A.", "CHASE MORTGAGE"], "chase.com", "800-848-9136"
    ),
    _servicer(
        "Bank of America Home Loans",
        ["Bank of America", "Bank of America, N.A.", "BofA (Bank of America)"],
        "bankofamerica.com",
        "800-669-6607",
    ),
    _servicer(
        "U.S. Bank Home Mortgage",
        ["U.S. Bank", "US Bank Home Mortgage", "U.S. BANK N.A."],
        "usbank.com",
        "800-365-7772",
    ),
    _servicer("Newrez", ["NewRez LLC", "Newrez Mortgage", "NEWREZ"], "newrez.com", "888-673-5521"),
    _servicer(
        "Shellpoint Mortgage Servicing",
        ["Shellpoint", "Shellpoint Mortgage", "SHELLPOINT MTG SVCG"],
        "shellpointmtg.com",
        "800-365-7107",
    ),
    _servicer(
        "Lakeview Loan Servicing",
        ["Lakeview", "Lakeview Loan Servicing, LLC"],
        "lakeviewloanservicing.com",
        "855-253-8439",
    ),
    _servicer("LoanCare", ["LoanCare, LLC", "Loancare", "LOANCARE SERVICING"], "myloancare.com", "800-274-6600"),
    _servicer("Cenlar", ["Cenlar FSB", "CENLAR", "Cenlar Central Loan Administration"], "cenlar.com", "855-839-6253"),
    _servicer(
        "Carrington Mortgage Services",
        ["Carrington", "Carrington Mortgage Services, LLC", "CARRINGTON MTG"],
        "carringtonms.com",
        "800-561-4567",
    ),
    _servicer(
        "PHH Mortgage", ["PHH Mortgage Services", "PHH", "PHH MORTGAGE CORP"], "mortgagequestions.com", "800-750-2518"
    ),
    _servicer("Flagstar Bank", ["Flagstar", "Flagstar Bank, N.A.", "FLAGSTAR"], "flagstar.com", "800-968-7700"),
    _servicer("Guild Mortgage", ["Guild Mortgage Company", "Guild", "GUILD MTG"], "guildmortgage.com", "800-365-4441"),
    _servicer("PNC Mortgage", ["PNC Bank, N.A.", "PNC", "PNC Mortgage Servicing"], "pnc.com", "800-822-5626"),
    _servicer("Truist Mortgage", ["Truist", "Truist Bank", "TRUIST MTG"], "truist.com", "800-634-7928"),
    _servicer(
        "Fifth Third Mortgage", ["Fifth Third Bank", "Fifth Third", "Fifth Third Bank, N.A."], "53.com", "800-375-1747"
    ),
    _servicer(
        "Huntington Mortgage",
        ["Huntington National Bank", "Huntington", "HUNTINGTON MTG"],
        "huntington.com",
        "800-323-4695",
    ),
    _servicer(
        "Regions Mortgage", ["Regions Bank", "Regions", "REGIONS MORTGAGE SERVICING"], "regions.com", "800-986-2462"
    ),
    _servicer("M&T Bank", ["M&T Bank Mortgage", "M&T", "M&T Bank, N.A."], "mtb.com", "800-724-6070"),
    _servicer(
        "Select Portfolio Servicing",
        ["SPS (Select Portfolio Servicing)", "Select Portfolio Servicing, Inc.", "SELECT PORTFOLIO SVCG"],
        "spservicing.com",
        "888-818-6032",
    ),
    _servicer(
        "Specialized Loan Servicing",
        ["SLS (Specialized Loan Servicing)", "Specialized Loan Servicing LLC"],
        "sls.net",
        "800-315-4757",
    ),
    _servicer(
        "Midland Mortgage",
        ["Midland Mortgage, a division of MidFirst Bank", "Midland", "MIDLAND MTG"],
        "mymidlandmortgage.com",
        "800-654-4566",
    ),
    _servicer("AmeriHome Mortgage", ["AmeriHome", "AmeriHome Mortgage Company, LLC"], "amerihome.com", "888-219-2599"),
    _servicer("loanDepot", ["loanDepot.com, LLC", "LoanDepot", "LOANDEPOT"], "loandepot.com", "888-337-6888"),
    _servicer(
        "United Wholesale Mortgage",
        ["UWM (United Wholesale Mortgage)", "United Wholesale Mortgage, LLC"],
        "uwm.com",
        "800-981-8898",
    ),
    _servicer(
        "Navy Federal Credit Union",
        ["Navy Federal", "NAVY FEDERAL CU", "Navy Federal CU"],
        "navyfederal.org",
        "888-842-6328",
    ),
    _servicer(
        "Planet Home Lending", ["Planet Home", "Planet Home Lending, LLC"], "planethomelending.com", "855-884-2250"
    ),
    _servicer(
        "RoundPoint Mortgage Servicing",
        ["RoundPoint", "Roundpoint Mortgage", "ROUNDPOINT MTG SVCG"],
        "roundpointmortgage.com",
        "877-426-8805",
    ),
    _servicer("Selene Finance", ["Selene", "Selene Finance LP", "SELENE FIN"], "selenefinance.com", "877-735-3637"),
    _servicer("Fay Servicing", ["Fay Servicing, LLC", "FAY SERVICING", "Fay"], "fayservicing.com", "800-495-7166"),
    _servicer(
        "Rushmore Servicing",
        ["Rushmore", "Rushmore Loan Management Services", "RUSHMORE SVCG"],
        "rushmoreservicing.com",
        "888-504-6700",
    ),
    _servicer("Servbank", ["ServBank, N.A.", "SERVBANK"], "servbank.com", "866-397-5370"),
    _servicer(
        "Dovenmuehle Mortgage",
        ["Dovenmuehle", "Dovenmuehle Mortgage, Inc.", "DMI Dovenmuehle"],
        "dovenmuehle.com",
        "800-669-4268",
    ),
    _servicer(
        "Citizens Bank", ["Citizens", "Citizens Bank, N.A.", "CITIZENS BANK MTG"], "citizensbank.com", "800-234-6002"
    ),
    _servicer("Sun West Mortgage", ["Sun West", "Sun West Mortgage Company, Inc."], "swmc.com", "800-345-7884"),
    _servicer("Nationstar", ["Nationstar Mortgage LLC", "NATIONSTAR MTG"], "nationstarmtg.com", "888-480-2432"),
)

FIRST_NAMES = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
    "Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra "
    "Mark Margaret Donald Ashley Steven Kimberly Andrew Emily Paul Donna Joshua Michelle Kenneth Carol Kevin "
    "Amanda Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Jason Laura Edward Sharon Jeffrey "
    "Cynthia Ryan Kathleen Jacob Amy Gary Angela Nicholas Shirley Eric Anna Jonathan Brenda Stephen Pamela "
    "Larry Emma Justin Nicole Scott Helen Brandon Samantha Benjamin Katherine Samuel Christine Gregory Debra "
    "Alexander Rachel Patrick Carolyn Frank Janet Raymond Maria Jack Olivia Dennis Heather Jerry Diane Tyler "
    "Julie Aaron Joyce Jose Victoria Adam Kelly Nathan Christina Henry Lauren Zachary Joan Douglas Evelyn "
    "Peter Judith Kyle Megan Noah Andrea Ethan Cheryl Jeremy Hannah Walter Jacqueline Christian Martha Keith "
    "Gloria Roger Teresa Terry Ann Austin Sara Sean Madison Gerald Frances Carl Kathryn Dylan Janice Harold "
    "Jean Jordan Abigail Jesse Alice Bryan Judy Lawrence Sophia Arthur Grace Gabriel Denise Bruce Amber Logan "
    "Doris Billy Marilyn Joe Danielle Alan Beverly Juan Isabella Elijah Theresa Willie Diana Albert Natalie "
    "Wayne Brittany Randy Charlotte Mason Marie Vincent Kayla Liam Alexis Priya Wei Mei Hiroshi Aiko Carlos "
    "Sofia Miguel Lucia Ahmed Fatima Omar Aisha Dmitri Olga Kwame Ama Raj Anjali Tuan Linh Jae-won Min-ji "
    "Giovanni Chiara Sean Siobhan Lars Ingrid Mateo Valentina"
)

LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez "
    "Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker "
    "Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards "
    "Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey "
    "Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza "
    "Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry "
    "Russell Sullivan Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan "
    "Patterson Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera "
    "Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald "
    "Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson "
    "Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black "
    "Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels O'Brien Kowalski "
    "Nakamura Yamamoto Okafor Mensah Schneider Novak Ivanova Haddad Khan Singh Shah Wang Zhang Liu Park Choi "
    "Rossi Bianchi Dubois Larsen Johansson Costa Oliveira Kaur Abdullah"
)

STREET_NAMES = _words(
    "Maple Oak Pine Cedar Elm Washington Lake Hill Park Main Sunset Ridge Willow Birch Highland Meadow Forest "
    "River Spring Church Mill Lincoln Jackson Franklin Valley Cherry Chestnut Walnut Magnolia Dogwood Aspen "
    "Juniper Sycamore Hickory Laurel Poplar Cypress Orchard Prairie Canyon Creek Harbor Bayview Summit "
    "Greenfield Fairview Brookside Kingsley Winding Stonegate Heritage Colonial Quail"
)

STREET_TYPES = (
    "St",
    "Street",
    "Ave",
    "Avenue",
    "Rd",
    "Road",
    "Dr",
    "Drive",
    "Ln",
    "Lane",
    "Ct",
    "Blvd",
    "Way",
    "Pl",
    "Cir",
    "Ter",
)

CITIES = (
    ("Springfield", "IL"),
    ("Columbus", "OH"),
    ("Austin", "TX"),
    ("Charlotte", "NC"),
    ("Phoenix", "AZ"),
    ("Denver", "CO"),
    ("Tampa", "FL"),
    ("Raleigh", "NC"),
    ("Nashville", "TN"),
    ("Boise", "ID"),
    ("Madison", "WI"),
    ("Richmond", "VA"),
    ("Sacramento", "CA"),
    ("Fresno", "CA"),
    ("Tucson", "AZ"),
    ("Omaha", "NE"),
    ("Louisville", "KY"),
    ("Albuquerque", "NM"),
    ("Spokane", "WA"),
    ("Des Moines", "IA"),
    ("Knoxville", "TN"),
    ("Greenville", "SC"),
    ("Savannah", "GA"),
    ("Plano", "TX"),
    ("Mesa", "AZ"),
    ("Aurora", "CO"),
    ("Naperville", "IL"),
    ("Ann Arbor", "MI"),
    ("Grand Rapids", "MI"),
    ("Akron", "OH"),
    ("Scranton", "PA"),
    ("Allentown", "PA"),
    ("Worcester", "MA"),
    ("Hartford", "CT"),
    ("Providence", "RI"),
    ("Burlington", "VT"),
    ("Portland", "ME"),
    ("Salem", "OR"),
    ("Eugene", "OR"),
    ("Reno", "NV"),
    ("Henderson", "NV"),
    ("Ogden", "UT"),
    ("Provo", "UT"),
    ("Billings", "MT"),
    ("Fargo", "ND"),
    ("Sioux Falls", "SD"),
    ("Wichita", "KS"),
    ("Tulsa", "OK"),
    ("Little Rock", "AR"),
    ("Jackson", "MS"),
    ("Mobile", "AL"),
    ("Baton Rouge", "LA"),
    ("Lexington", "KY"),
    ("Dayton", "OH"),
    ("Toledo", "OH"),
    ("Rochester", "NY"),
    ("Syracuse", "NY"),
    ("Trenton", "NJ"),
    ("Wilmington", "DE"),
    ("Frederick", "MD"),
)

# Servicer mailing cities (P.O. boxes), separate from borrower cities so addresses read differently.
SERVICER_CITIES = (
    ("Detroit", "MI"),
    ("Dallas", "TX"),
    ("Coppell", "TX"),
    ("Moorpark", "CA"),
    ("Mount Laurel", "NJ"),
    ("Fort Mill", "SC"),
    ("Des Moines", "IA"),
    ("Monroe", "LA"),
    ("Irving", "TX"),
    ("West Palm Beach", "FL"),
    ("Greenville", "SC"),
    ("Oklahoma City", "OK"),
    ("Salt Lake City", "UT"),
    ("Highlands Ranch", "CO"),
)

AGENT_FIRST_NAMES = (
    "Maria",
    "Kevin",
    "Tasha",
    "Luis",
    "Brianna",
    "Derek",
    "Ana",
    "Marcus",
    "Jenna",
    "Omar",
    "Kelly",
    "Tyrone",
    "Monica",
    "Raj",
    "Heather",
    "Andre",
    "Crystal",
    "Vince",
    "Destiny",
    "Paul",
    "Grace",
    "Ivan",
)
