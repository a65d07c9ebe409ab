"""A vector query through SQLAlchemy: store three items, print the nearest to [1, 1, 1].

    DATABASE_URL=postgresql://app:...@172.17.0.1:5432/app python nearest.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy import create_engine, delete, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import Item

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
engine = create_engine(url)
with Session(engine) as session:
    session.execute(delete(Item))
    session.add_all(
        [
            Item(id=1, content="far", embedding=[9, 9, 9]),
            Item(id=2, content="near", embedding=[1, 1, 2]),
            Item(id=3, content="middle", embedding=[3, 3, 3]),
        ]
    )
    session.commit()
    query = select(Item.content, Item.embedding.l2_distance([1, 1, 1])).order_by(Item.embedding.l2_distance([1, 1, 1])).limit(2)
    for content, distance in session.execute(query):
        print(f"{content} {distance:g}")
