"""inferplan's planning app: `streamlit run app.py`. A view over the simulator's public API (simulator.api)."""

import streamlit as st

st.set_page_config(page_title="inferplan", page_icon="📈", layout="wide")

pages = [
    st.Page("pages/plan.py", title="Plan", default=True),
    st.Page("pages/compare.py", title="Compare"),
    st.Page("pages/capacity.py", title="Capacity"),
    st.Page("pages/calibration.py", title="Calibration"),
]
st.navigation(pages).run()
