"""Word pools for receipts: shop names, streets and towns, and what each kind of shop sells.

Names and places are realistic for their region but made up. ``ITEMS`` is keyed by a style's goods (with
``_DE``/``_NL``/``_FR`` for a European shop's language); an item is ``(name, low, high)``, the range its unit
price is drawn from (once per shop, so a shop charges the same for the same thing every time).
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


# ---------------------------------------------------------------------------------------------- Malaysia

MY_NAME_CORES = _words(
    "SANYU|AH SENG|KIM HENG|SIN CHEW|HENG HUAT|MAJU JAYA|SRI MURNI|BINTANG|CAHAYA|GOLDEN|MEWAH|SENTOSA|TECK HIN|"
    "LIAN HONG|PRIMA|HUP SENG|KWONG ON|YEE LEE|SOON HUAT|WAH SENG|AL-AMIN|NUR|SELERA|DAMAI|MUTIARA|PERMATA|"
    "UNIQUE|ECO|HWA TAI|TONG HIN|LUCKY|FAMILY|SYARIKAT JAYA|AIK CHEONG|CHOP HOCK|YONG FATT|KEDAH|SRI RAYA|"
    "BESTARI|SINAR|GEMILANG|KAMAL|RAHMAT|MOHD ALI|SIVA|MUTHU|RAJA|KIM LOONG|HOCK SOON|GUAN HUAT|THYE HONG"
)
MY_SHOP_WORDS = {
    "grocery": _words("MINI MARKET|SUPERMARKET|MART|KEDAI RUNCIT|PASARAYA|STORE|GROCERY|TRADING"),
    "hardware": _words(
        "STATIONERY SHOP|HARDWARE|BOOK STORE|ELECTRICAL|TRADING|STATIONERY & PRINTING|BUILDING MATERIAL"
    ),
    "restaurant": _words("RESTORAN|KOPITIAM|CAFE|NASI KANDAR|BAKERY|FOOD CORNER|DIM SUM|STEAMBOAT"),
    "invoice": _words("ENGINEERING|SERVICES|SUPPLY|TECHNOLOGY|OFFICE SUPPLIES|MARKETING|TRADING|AIRCOND & ELECTRICAL"),
}
MY_LEGAL = _words("SDN BHD|SDN. BHD.|ENTERPRISE|TRADING|(M) SDN BHD|PLT|SDN BHD")
MY_STREETS = _words(
    "JALAN BESAR|JALAN IPOH|JALAN KLANG LAMA|JALAN TUN RAZAK|JALAN SULTAN ISMAIL|JALAN PUDU|JALAN MERU|"
    "JALAN KENARI 5|JALAN PERMAS 10|JALAN SS 2/24|JALAN USJ 10/1|JALAN PJS 1/48|JALAN KPB 6|JALAN MAHSURI|"
    "JALAN TEMENGGUNG|JALAN DATO ONN|JALAN SEROJA 3|JALAN MELATI 2|JALAN KEMBOJA|JALAN INDAH 15|"
    "JALAN SETIA 3/8|JALAN PERDANA 4|JALAN MUTIARA EMAS 5/1|JALAN RADIN BAGUS|JALAN BUNUS 6|JALAN SERDANG RAYA"
)
MY_AREAS = _words(
    "TAMAN MELAWATI|TAMAN CONNAUGHT|TAMAN SRI GOMBAK|TAMAN DAYA|BANDAR BARU BANGI|BANDAR PUCHONG JAYA|"
    "TAMAN MOLEK|TAMAN BUKIT INDAH|TAMAN SEGAR|TAMAN MIDAH|BANDAR SUNWAY|KAWASAN PERINDUSTRIAN BALAKONG|"
    "TAMAN SERI KEMBANGAN|BANDAR BOTANIC|TAMAN UNIVERSITI|TAMAN PELANGI|SEKSYEN 13|TAMAN SRI MUDA|PUSAT BANDAR"
)
# (town, state, postcode range)
MY_TOWNS = (
    ("KUALA LUMPUR", "WILAYAH PERSEKUTUAN", 50000, 60000),
    ("PETALING JAYA", "SELANGOR", 46000, 47800),
    ("SHAH ALAM", "SELANGOR", 40000, 40470),
    ("KAJANG", "SELANGOR", 43000, 43000),
    ("SERI KEMBANGAN", "SELANGOR", 43300, 43300),
    ("KLANG", "SELANGOR", 41000, 41300),
    ("PUCHONG", "SELANGOR", 47100, 47190),
    ("CHERAS", "SELANGOR", 43200, 43200),
    ("RAWANG", "SELANGOR", 48000, 48000),
    ("BENTONG", "PAHANG", 28700, 28700),
    ("KUANTAN", "PAHANG", 25000, 26100),
    ("IPOH", "PERAK", 30000, 31650),
    ("JOHOR BAHRU", "JOHOR", 80000, 81300),
    ("BATU PAHAT", "JOHOR", 83000, 83000),
    ("GEORGE TOWN", "PULAU PINANG", 10000, 10470),
    ("MELAKA", "MELAKA", 75000, 75450),
    ("SEREMBAN", "NEGERI SEMBILAN", 70000, 70450),
    ("KOTA BHARU", "KELANTAN", 15000, 15350),
)
MY_CASHIERS = _words("SITI|AMIRAH|NURUL|FARAH|AZLAN|MEI LING|KAR WEI|PRIYA|KUMAR|HAFIZ|AISYAH|JASON|ALVIN|VANI|ZUL")

# ---------------------------------------------------------------------------------------------- Singapore

SG_NAME_CORES = _words(
    "Kopi Point|Lion City|Merlion|Orchid|Tanjong|Harbourfront|Kampong|Jade Garden|Red Dot|Straits|Raffles Lane|"
    "Peranakan House|Ah Hock|Sin Heng|Tiong Bahru|Katong|Eng Seng|Chin Lee|Golden Mile|Bukit|Hup Lee|Fortune|"
    "Sunrise|Evergreen|Blue Lotus|Little India|Joo Chiat|Marina|Pasir Panjang|Kim Seng"
)
SG_SHOP_WORDS = {
    "retail": _words("Mart|Trading|Home Living|Stationers|Pharmacy|Electronics|Bookshop|Minimart|Provision Shop"),
    "restaurant": _words("Kitchen|Cafe|Eating House|Bistro|Noodle House|Seafood Restaurant|Bakery|Coffee Shop"),
    "invoice": _words("Engineering|Services|Supplies|Solutions|Technologies|Trading|Facilities Management"),
}
SG_LEGAL = _words("PTE LTD|PTE. LTD.|(S) PTE LTD|Pte Ltd|LLP|Pte. Ltd.")
SG_STREETS = _words(
    "Orchard Road|Tanjong Pagar Road|Jurong West Street 41|Ang Mo Kio Avenue 3|Tampines Central 1|Bukit Timah Road|"
    "Serangoon Road|North Bridge Road|Beach Road|Upper Thomson Road|East Coast Road|Lorong 8 Toa Payoh|"
    "Bedok North Street 1|Yishun Ring Road|Clementi Avenue 3|Hougang Avenue 10|Woodlands Drive 14|Telok Ayer Street"
)
SG_BUILDINGS = _words(
    "Plaza Singapura|Bugis Junction|Tampines Mall|Jurong Point|Northpoint City|VivoCity|Causeway Point|Westgate|"
    "Compass One|Lot One|Hougang Mall|Junction 8|Heartland Mall|Bedok Mall|Sun Plaza"
)

# ---------------------------------------------------------------------------------------------- United States

US_NAME_CORES = _words(
    "Main Street|Riverside|Bluebird|Cornerstone|Lakeside|Pioneer|Liberty|Copper Kettle|Golden Gate|Maple Leaf|"
    "Northside|Sunrise|Hometown|Evergreen|Red Barn|Silver Spoon|Union Square|Harbor Light|Prairie|Cedar Creek"
)
US_SHOP_WORDS = {
    "retail": _words("Hardware|Market|Pharmacy|General Store|Grocery|Supply Co.|Hardware & Garden|Drug Store|Foods"),
    "restaurant": _words("Grill|Diner|Bistro|Kitchen|Tap House|Pizzeria|Cafe|Taqueria|Smokehouse|Bar & Grill"),
}
US_LEGAL = _words("Inc.|LLC|Co.|Inc|LLC.|Corp.")
US_SERVERS = _words("Ashley|Tyler|Jess|Marcus|Kayla|Brandon|Destiny|Mike|Sam|Nicole|Hunter|Alexis")

# ---------------------------------------------------------------------------------------------- Europe

DE_NAME_CORES = _words("Müller|Schmidt|Schneider|Fischer|Weber|Becker|Hoffmann|Schäfer|Koch|Richter|Wolf|Neumann")
DE_SHOP_WORDS = {
    "retail": _words("Frischmarkt|Getränkemarkt|Markt|Drogerie|Biomarkt|Lebensmittel"),
    "restaurant": _words("Bäckerei|Café|Konditorei|Imbiss|Brauhaus|Kaffeehaus"),
}
DE_LEGAL = _words("GmbH|GmbH & Co. KG|e.K.|KG|OHG")
DE_STREETS = _words("Hauptstraße|Bahnhofstraße|Gartenstraße|Schulstraße|Lindenweg|Kirchplatz|Marktplatz|Bergstraße")
DE_TOWNS = (
    ("Berlin", "10115"),
    ("Hamburg", "20095"),
    ("München", "80331"),
    ("Köln", "50667"),
    ("Frankfurt am Main", "60311"),
    ("Stuttgart", "70173"),
    ("Leipzig", "04109"),
    ("Dresden", "01067"),
    ("Hannover", "30159"),
    ("Nürnberg", "90402"),
)
NL_NAME_CORES = _words("De Vries|Jansen|Bakker|Visser|Smit|Mulder|De Boer|Dekker|Van Dijk|Hendriks")
NL_SHOP_WORDS = {
    "retail": _words("Supermarkt|Versmarkt|Drogisterij|Buurtsuper"),
    "restaurant": _words("Bakkerij|Eetcafé|Koffiehuis|Lunchroom"),
}
NL_LEGAL = _words("B.V.|V.O.F.|B.V.")
NL_STREETS = _words("Kerkstraat|Dorpsstraat|Stationsweg|Molenweg|Prinsengracht|Marktplein|Schoolstraat")
NL_TOWNS = (("Amsterdam", "1017 GB"), ("Utrecht", "3511 AB"), ("Rotterdam", "3011 AD"), ("Haarlem", "2011 RA"))
FR_NAME_CORES = _words("Dupont|Martin|Bernard|Petit|Moreau|Laurent|Lefèvre|Roux|Fontaine|Chevalier")
FR_SHOP_WORDS = {
    "retail": _words("Épicerie|Supérette|Primeur|Cave|Droguerie"),
    "restaurant": _words("Boulangerie|Café|Brasserie|Pâtisserie|Crêperie"),
}
FR_LEGAL = _words("SARL|SAS|EURL|SA")
FR_STREETS = _words("rue de la Paix|rue Victor Hugo|avenue Jean Jaurès|boulevard Voltaire|place de la Mairie")
FR_TOWNS = (("Paris", "75002"), ("Lyon", "69002"), ("Lille", "59000"), ("Bordeaux", "33000"), ("Nantes", "44000"))

# ---------------------------------------------------------------------------------------------- goods

# fmt: off
ITEMS = {
    "my_grocery": (
        ("MILO 1KG", 24, 32), ("GARDENIA WHITE BREAD 600G", 3.5, 4.5), ("DUTCH LADY UHT MILK 1L", 6, 8),
        ("MAGGI KARI 5X79G", 5.5, 7), ("BERAS SST5 10KG", 26, 35), ("TELUR GRED A 10'S", 4.5, 6.5),
        ("MINYAK MASAK 5KG", 25, 32), ("GULA PASIR 1KG", 2.85, 3.2), ("100PLUS 1.5L", 3.2, 4.5),
        ("NESCAFE 3IN1 25'S", 14, 19), ("SARDIN AYAM 425G", 5.5, 7.5), ("KICAP MANIS 345ML", 3.5, 5),
        ("TISU MUKA 4X150'S", 8, 12), ("SABUN DOBI 3KG", 18, 26), ("AIR MINERAL 1.5L", 1.5, 2.6),
        ("ROTI CANAI FROZEN 20'S", 9, 13), ("BAWANG MERAH 1KG", 6, 9), ("SUSU PEKAT MANIS", 3, 4.5),
        ("BISKUT KRIM 400G", 5, 8), ("TEH BOH 250G", 6, 8.5), ("SAWI HIJAU", 1.5, 3.5), ("AYAM SEGAR /KG", 8, 11),
    ),
    "my_hardware": (
        ("A4 PAPER 80GSM 500'S", 11, 16), ("PILOT G2 0.5 BLUE", 3.5, 5.5), ("STAPLER NO.10", 6, 12),
        ("PVC PIPE 1/2\" 6M", 8, 14), ("CABLE TIE 8\" 100PCS", 4, 7), ("PAINT BRUSH 2\"", 3, 6),
        ("SCREW 8X1\" (100)", 5, 9), ("MASKING TAPE 24MM", 2.5, 4), ("GLUE STICK 21G", 2.2, 4),
        ("EXERCISE BOOK 80P", 1.2, 2.5), ("CORRECTION TAPE", 2.9, 5.5), ("EXTENSION SOCKET 3 WAY", 18, 35),
        ("LED BULB 9W", 6, 12), ("SANDPAPER #120", 0.8, 1.6), ("WALL PLUG 6MM", 1.5, 3), ("ENVELOPE 4X9 (50)", 5, 9),
        ("FILE BOX", 7, 12), ("HIGHLIGHTER YELLOW", 1.8, 3.5), ("CEMENT 50KG", 17, 22), ("SILICONE SEALANT", 9, 16),
    ),
    "my_restaurant": (
        ("NASI LEMAK AYAM", 8, 13), ("TEH TARIK", 1.8, 3), ("ROTI CANAI", 1.2, 2), ("MEE GORENG MAMAK", 6, 9),
        ("KOPI O AIS", 1.8, 3), ("CHAR KUEY TEOW", 7, 11), ("NASI GORENG KAMPUNG", 7, 10),
        ("MILO DINOSAUR", 4, 6.5), ("ROTI TELUR", 2, 3), ("AYAM GORENG", 4, 7), ("LIMAU AIS", 2, 3.5),
        ("WANTAN MEE", 6, 9), ("BAK KUT TEH", 12, 18), ("NASI BERIANI", 9, 14), ("SIRAP BANDUNG", 2.5, 4),
    ),
    "sg_retail": (
        ("Detergent 3kg", 9, 15), ("Toilet Roll 10s", 6, 11), ("Panadol 20s", 5, 9), ("Vitamin C 1000mg", 12, 25),
        ("USB-C Cable 1m", 8, 19), ("A4 Ring File", 2.5, 5), ("Hand Sanitiser 500ml", 4, 8), ("Rice 5kg", 10, 17),
        ("Instant Noodles 5s", 3, 5), ("Dish Sponge 3s", 2, 4), ("Umbrella", 9, 19), ("Face Mask 50s", 6, 14),
    ),
    "sg_restaurant": (
        ("Chicken Rice", 4.5, 8), ("Laksa", 6, 10), ("Kopi C", 1.5, 2.5), ("Iced Lemon Tea", 2.5, 4.5),
        ("Fish & Chips", 12, 19), ("Carbonara", 14, 22), ("Chilli Crab", 55, 90), ("Cereal Prawns", 22, 34),
        ("Fried Rice", 7, 12), ("Kaya Toast Set", 4.5, 6.8), ("Teh Peng", 1.8, 2.8), ("Sambal Kangkong", 10, 16),
    ),
    "us_retail": (
        ("PAPER TOWELS 6PK", 8, 14), ("AA BATTERIES 8CT", 7, 12), ("MILK 2% GAL", 3.2, 4.8), ("EGGS LG DOZ", 2.5, 5),
        ("WD-40 8OZ", 5, 8), ("DUCT TAPE", 4.5, 9), ("IBUPROFEN 100CT", 6, 12), ("BREAD WHEAT", 2.8, 4.5),
        ("COFFEE GROUND 12OZ", 7, 11), ("LIGHT BULB 4PK", 8, 15), ("HOSE NOZZLE", 6, 13), ("SHAMPOO 12OZ", 4, 9),
        ("BANANAS", 1.2, 2.5), ("DOG FOOD 15LB", 18, 32), ("SCREWDRIVER SET", 12, 25), ("SODA 12PK", 5, 8),
    ),
    "us_restaurant": (
        ("Cheeseburger", 11, 16), ("Caesar Salad", 9, 13), ("Iced Tea", 2.5, 3.5), ("Fries", 3.5, 5.5),
        ("Draft IPA", 6, 9), ("Wings (10)", 13, 18), ("Club Sandwich", 11, 15), ("Coke", 2.5, 3.5),
        ("Fish Tacos", 12, 17), ("Pancake Stack", 8, 12), ("Coffee", 2, 3.5), ("Margherita Pizza", 13, 19),
    ),
    "eu_retail_DE": (
        ("Vollmilch 3,5% 1L", 0.99, 1.49), ("Bio Bananen", 1.49, 2.29), ("Butter 250g", 1.99, 2.99),
        ("Brötchen", 0.35, 0.59), ("Pfand", 0.25, 0.25), ("Kaffee 500g", 4.99, 7.99), ("Käse Gouda", 2.29, 3.49),
        ("Mineralwasser 1,5L", 0.49, 0.89), ("Toilettenpapier 8x", 2.99, 4.49), ("Äpfel 1kg", 1.99, 2.99),
        ("Pasta 500g", 0.89, 1.79), ("Joghurt 500g", 0.79, 1.49), ("Apfelschorle 1L", 0.89, 1.39),
    ),
    "eu_retail_NL": (
        ("Halfvolle melk 1L", 0.99, 1.39), ("Kaas jong belegen", 3.49, 5.99), ("Bananen", 1.29, 1.99),
        ("Volkoren brood", 1.89, 2.79), ("Statiegeld", 0.25, 0.25), ("Koffie 500g", 4.49, 7.49),
        ("Hagelslag", 1.99, 2.89), ("Appels 1kg", 1.79, 2.79), ("Pindakaas", 2.29, 3.49), ("Stroopwafels", 1.49, 2.49),
    ),
    "eu_retail_FR": (
        ("Lait demi-écrémé", 0.95, 1.45), ("Baguette", 0.9, 1.3), ("Yaourt nature x4", 1.2, 2.1),
        ("Camembert", 1.9, 3.5), ("Eau minérale 1,5L", 0.45, 0.85), ("Pommes 1kg", 1.99, 2.99),
        ("Café moulu 250g", 2.49, 4.29), ("Jambon x4", 2.29, 3.99), ("Beurre doux 250g", 1.99, 2.89),
    ),
    "eu_restaurant_DE": (
        ("Cappuccino", 2.8, 4.2), ("Apfelstrudel", 3.5, 5.5), ("Käsekuchen", 3.2, 4.9), ("Espresso", 1.9, 2.8),
        ("Latte Macchiato", 3.2, 4.5), ("Butterbrezel", 1.6, 2.6), ("Schnitzel", 11, 17), ("Weizenbier 0,5L", 3.9, 5.2),
    ),
    "eu_restaurant_NL": (
        ("Koffie", 2.4, 3.4), ("Tosti ham kaas", 3.5, 5.5), ("Appeltaart", 3.5, 4.8), ("Verse jus", 3.2, 4.5),
        ("Bitterballen (8)", 5.5, 7.5), ("Uitsmijter", 7.5, 10.5), ("Thee", 2.2, 3),
    ),
    "eu_restaurant_FR": (
        ("Café crème", 2.5, 4), ("Croissant", 1.1, 1.8), ("Pain au chocolat", 1.2, 1.9), ("Quiche lorraine", 4, 7),
        ("Jus d'orange", 3, 4.5), ("Croque monsieur", 6, 9), ("Crêpe sucre", 3, 5), ("Galette complète", 8, 12),
    ),
    "invoice": (
        ("Toner cartridge 85A", 180, 320), ("Aircond servicing (per unit)", 80, 150), ("Delivery charges", 20, 80),
        ("Printing of name cards (box)", 30, 60), ("A4 paper (carton)", 95, 140), ("Labour charges", 150, 600),
        ("Office chair", 220, 480), ("Network cable Cat6 (box)", 250, 420), ("Cleaning service (monthly)", 400, 1200),
        ("Signboard fabrication", 600, 2500), ("Laptop repair", 120, 450), ("Plumbing parts", 40, 260),
    ),
}
# fmt: on

# ---------------------------------------------------------------------------------------------- footers

FOOTERS = {
    "MY": _words(
        "THANK YOU. PLEASE COME AGAIN|GOODS SOLD ARE NOT RETURNABLE & REFUNDABLE|**** THANK YOU ****|"
        "TERIMA KASIH SILA DATANG LAGI|Goods sold are not returnable.|PLEASE KEEP THIS RECEIPT FOR EXCHANGE|"
        "THIS IS A COMPUTER GENERATED RECEIPT|Powered by SmartPOS|LIKE US ON FACEBOOK|THANK YOU FOR SHOPPING WITH US"
    ),
    "SG": _words(
        "Thank you & see you again!|No exchange or refund|Follow us on Instagram|Prices are inclusive of GST|"
        "Please retain receipt for exchange within 7 days|THANK YOU, PLEASE COME AGAIN|Powered by iChef POS"
    ),
    "US": _words(
        "THANK YOU FOR SHOPPING WITH US!|Returns accepted within 30 days with receipt|Tell us how we did!|"
        "Have a nice day!|CUSTOMER COPY|Thank you! Please come again|Follow us @ourstore|ALL SALES FINAL"
    ),
    "DE": _words(
        "Vielen Dank für Ihren Einkauf!|Bitte beachten Sie unsere Öffnungszeiten|Umtausch nur mit Kassenbon|"
        "Auf Wiedersehen|Kundenbeleg|Danke und bis bald"
    ),
    "NL": _words("Bedankt voor uw bezoek!|Tot ziens|Ruilen binnen 14 dagen met kassabon|Klantenbon"),
    "FR": _words("Merci de votre visite|A bientôt !|Ticket client|Conservez votre ticket|Bonne journée"),
}
