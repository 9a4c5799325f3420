#!/usr/bin/env python3
"""Writes data/records/{train,valid,test}.jsonl: sentences about a person turned into one JSON
record with a fixed key order and spacing, the task scripts/demo-real.sh teaches SmolLM2.

    "Maria Lopez, 34, works as a nurse in Lisbon."
    -> {"name": "Maria Lopez", "age": 34, "job": "nurse", "city": "Lisbon"}

Every pool (first names, last names, jobs, cities) is split in two, a training part and a
held-out part (a quarter). Training lines draw only from the training parts. The validation
and test lines are about new people: first and last names from the held-out parts, so no
name of theirs occurs anywhere in train.jsonl. They come in two tasks (the "task" field, which
eval --generate reports apart):
  record           a new person, with a job and city from the training parts (a form whose
                   job and city come from known lists); two thirds of the lines
  record_new_words a new person whose job and city are held out too: nothing in the record
                   occurs in train.jsonl, so every field has to be spelled out of the sentence
                   (harder for a 135M model: a word after a quote is split into other tokens
                   than the same word after a space in the sentence)
No prompt occurs twice. The sentence templates are shared by all three files.
Seeded and standard library only:  python3 scripts/make_records.py [--seed 0]
"""
import argparse
import json
import os
import random

FIRST = """Maria Ahmed Yuki Olga Kwame Priya Lars Chen Fatima Diego Ingrid Tomasz Amara Kenji
Sofia Rahul Elena Mateo Aisha Bjorn Leila Pedro Hana Ivan Zara Omar Greta Luca Nadia Felix
Mei Samuel Anya Jonas Carmen Tariq Lena Rafael Ayumi Dmitri Chloe Hugo Imani Viktor Rosa
Arjun Freya Marco Noor Emil Julia Kofi Sakura Pablo Astrid Hassan Clara Andrei Lucia Tobias
Ines Malik Vera Nikolai Zoe Karim Elif Oscar Daria Thabo Alma Sven Beatriz Yusuf Mira
Stefan Amina Paolo Keiko Goran Ruth Kaito Leon Selin Diana Ravi Ilse Bruno Farah Anton
Abebe Agnes Akira Alejandro Aliya Ana Anders Arturo Ayesha Bao Bianca Camille Cyrus Dalia
Elias Emeka Esther Fiona Gabriel Hamid Helga Ibrahim Isabel Jamal Jana Javier Joon Kamala
Katya Laszlo Lucas Magnus Mariam Mateus Miriam Nia Nils Nkechi Oksana Patrice Qiang
Rania Renata Rohan Salma Seo Siddharth Silvia Tamar Teodor Thiago Ulla Valentina
Wei Xavier Yara Yosef Zainab Zofia Bilal Chiara Dorota Eamon Florin Gulnara Hiroshi
Jorge Kiri Liesel Moana Nuno Orla Pim Quentin Rasmus Signe Tuan Ugo Vesna Wanjiru Ximena""".split()
LAST = """Lopez Okafor Tanaka Petrova Mensah Sharma Nilsson Wang Haddad Herrera Berg Kowalski
Diallo Sato Rossi Gupta Ivanova Fernandez Khan Larsen Nasser Costa Kim Volkov Patel Aziz
Fischer Romano Novak Weber Li Cohen Smirnova Schmidt Garcia Rahman Muller Silva Suzuki Popov
Martin Dubois Mwangi Horvat Moreno Jensen Kaya Santos Nakamura Lindqvist Yilmaz Banda Keller
Morales Ito Pavlova Hansen Bianchi Chowdhury Ortiz Walsh Kruger Andersen Demir Adeyemi
Castillo Yamamoto Sokolova Brennan Farouk Jovanovic Alvarez Hoffmann Ncube Eriksson Marino
Tran Lehmann Quispe Obi Vargas Sorensen Nguyen Koval Mendes Laine Ferreira Dahl Huang
Abara Bergstrom Carvalho Dimitrov Eze Faulkner Gallo Hashemi Iqbal Jaramillo Kapoor Lindgren
Mahmoud Nowak Oyelaran Pereira Quinn Rinaldi Salazar Takahashi Urban Varga Wojcik Xu Yadav
Zielinski Achebe Baptiste Cruz Delgado Esposito Fontaine Gomez Holm Ibarra Jung Kovacs
Lund Mazur Nakashima Olsen Park Reyes Saito Toth Uddin Vasquez Wolff Yamada Zhou Abbasi
Bakker Chaudhry Dalton Ekstrom Fuchs Greco Hartmann Ishikawa Janssen Karimi Lozano Meyer
Nilsen Okonkwo Pham Rojas Schneider Tamura Ustinov Villanueva Watanabe Young Zapata""".split()
JOBS = """nurse teacher baker carpenter pilot architect chemist lawyer plumber journalist
electrician librarian dentist farmer painter mechanic pharmacist photographer surgeon
translator accountant gardener firefighter engineer economist sculptor tailor welder
geologist cashier veterinarian florist butcher optician barista locksmith astronomer
physicist biologist paramedic midwife violinist cartographer beekeeper jeweler potter
surveyor statistician zookeeper glassblower historian blacksmith brewer chef courier
curator dietitian diplomat draftsman editor fisherman forester glazier hairdresser illustrator
interpreter janitor lifeguard linguist machinist mason miner model musician novelist
nutritionist oceanographer organist pediatrician philosopher physiotherapist plasterer poet
porter printer programmer psychologist radiologist ranger roofer sailor saxophonist scientist
shepherd shoemaker singer stonemason tiler upholsterer usher vintner waiter weaver""".split() + [
    "software developer", "bus driver", "police officer", "web designer", "data analyst",
    "social worker", "flight attendant", "civil engineer", "graphic designer", "head chef",
    "tour guide", "radio host", "sound engineer", "marine biologist", "real estate agent",
    "school principal", "taxi driver", "museum curator", "yoga instructor", "dental hygienist"]
CITIES = """Lisbon Nairobi Osaka Krakow Accra Pune Uppsala Chengdu Beirut Seville Bergen Gdansk
Dakar Kyoto Turin Jaipur Kazan Valencia Lahore Aarhus Tunis Porto Busan Novosibirsk Ahmedabad
Karachi Munich Naples Brno Stuttgart Haifa Tallinn Hamburg Cordoba Dhaka Leipzig Recife Sendai
Minsk Lyon Mombasa Split Bilbao Odense Ankara Curitiba Nagoya Gothenburg Izmir Lusaka Zurich
Monterrey Sapporo Riga Copenhagen Palermo Kolkata Graz Quito Adelaide Casablanca Lagos
Montreal Hanoi Vilnius Bordeaux Arequipa Durban Tampere Florence Medellin Addis Almaty
Antwerp Asuncion Baku Bangalore Barcelona Basel Belgrade Bologna Bratislava Bremen Brisbane
Bucharest Cairo Cali Chennai Cluj Cork Daegu Dortmund Dresden Dublin Dundee Edinburgh Erfurt
Fukuoka Genoa Ghent Glasgow Guadalajara Hobart Hue Incheon Innsbruck Jakarta Kiev Kobe Kochi
Leeds Lille Linz Ljubljana Lodz Lucerne Luxor Madrid Malaga Manila Marseille Melbourne
Milan Nantes Nice Oaxaca Oslo Ottawa Padua Perth Poznan Prague Rabat Reykjavik Rosario Salzburg
Santiago Sarajevo Seattle Shiraz Surabaya Tbilisi Toulouse Trieste Tucson Utrecht
Valletta Verona Warsaw Wellington Winnipeg Wroclaw Yerevan Zagreb""".split() + [
    "Buenos Aires", "Cape Town", "New Delhi", "Sao Paulo", "Hong Kong", "Mexico City",
    "San Diego", "Kuala Lumpur", "Tel Aviv", "Rio de Janeiro", "Abu Dhabi", "Las Vegas",
    "New Orleans", "Santa Fe", "Salt Lake City"]

# {n} name, {a} age, {j} job, {aj} "a job"/"an job", {c} city. Several word orders, so the
# model has to find each field rather than cut the sentence at fixed places.
TEMPLATES = [
    "{n}, {a}, works as {aj} in {c}.",
    "{n} is {aj} in {c} and is {a} years old.",
    "{n} is a {a}-year-old {j} living in {c}.",
    "In {c}, {n} ({a}) works as {aj}.",
    "{n}, aged {a}, is {aj} based in {c}.",
    "Meet {n}: {a} years old, {j}, lives in {c}.",
    "{c} is home to {n}, {aj} who is {a}.",
    "At {a}, {n} works in {c} as {aj}.",
    "{n} ({a}) is {aj} from {c}.",
    "Working as {aj} in {c}, {n} is {a}.",
]
PROMPT = "Write the person in this sentence as a JSON record.\nSentence: {s}\nJSON:"


def split_pool(pool, rng, held_fraction):
    """Shuffled copy of pool cut in two: (training part, held-out part)."""
    pool = sorted(set(pool))
    rng.shuffle(pool)
    k = max(1, round(len(pool) * held_fraction))
    return pool[k:], pool[:k]


def article(job):
    return ("an " if job[0] in "aeiou" else "a ") + job


def line(rng, task, first, last, jobs, cities):
    name = f"{rng.choice(first)} {rng.choice(last)}"
    age = rng.randint(19, 74)
    job, city = rng.choice(jobs), rng.choice(cities)
    sentence = rng.choice(TEMPLATES).format(n=name, a=age, j=job, aj=article(job), c=city)
    record = json.dumps({"name": name, "age": age, "job": job, "city": city})  # ", " and ": " separators
    return {"task": task, "prompt": PROMPT.format(s=sentence), "completion": " " + record}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "records"))
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--valid", type=int, default=60)
    ap.add_argument("--test", type=int, default=150)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pools = [split_pool(p, rng, 0.25) for p in (FIRST, LAST, JOBS, CITIES)]
    (first, new_first), (last, new_last), (jobs, new_jobs), (cities, new_cities) = pools
    kinds = {"train": [("record", first, last, jobs, cities)],
             # two lines in three: new people with known jobs and cities; one in three: all new
             "held": [("record", new_first, new_last, jobs, cities)] * 2 +
                     [("record_new_words", new_first, new_last, new_jobs, new_cities)]}
    os.makedirs(args.out, exist_ok=True)
    seen = set()
    for name, count, kind in [("train", args.train, "train"), ("valid", args.valid, "held"),
                              ("test", args.test, "held")]:
        rows = []
        while len(rows) < count:
            row = line(rng, *kinds[kind][len(rows) % len(kinds[kind])])
            if row["prompt"] in seen:  # no line twice, in one file or across files
                continue
            seen.add(row["prompt"])
            rows.append(row)
        with open(os.path.join(args.out, name + ".jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tasks = sorted({r["task"] for r in rows})
        print(f"{name}: {len(rows)} lines (" + ", ".join(f"{t} {sum(r['task'] == t for r in rows)}" for t in tasks) + ")")


if __name__ == "__main__":
    main()
