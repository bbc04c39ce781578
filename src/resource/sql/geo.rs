//! The measuring geospatial functions, computed as HarperDB computes them (turf 6.5: spherical
//! polygon area on a 6,378,137 m sphere, haversine lengths on a 6,371,008.8 m sphere):
//! `geoArea`, `geoLength`, `geoDistance`, `geoNear`; and `geoConvert` (the predicates,
//! `geoDifference` and `geoCircle` are in `geo_relate`). Arguments are GeoJSON values or their JSON
//! text; something that is not GeoJSON gives NULL, as HarperDB's NaN/undefined.

use super::eval::{as_f64, num};
use super::SqlError;
use crate::value::{json, Value};

const AREA_RADIUS: f64 = 6_378_137.0;
const EARTH_RADIUS: f64 = 6_371_008.8;

/// GeoJSON given as text parses; anything else is taken as it is.
pub(super) fn geojson(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) => json::parse(s.as_bytes()).ok(),
        other => Some(other.clone()),
    }
}

/// turf's `degreesToRadians` (with its `% 360`).
fn rad(d: f64) -> f64 {
    (d % 360.0) * std::f64::consts::PI / 180.0
}

/// turf area's own `rad`, without the `% 360`.
fn area_rad(d: f64) -> f64 {
    d * std::f64::consts::PI / 180.0
}

/// A position `[x, y]`; a null coordinate counts as 0, as in JavaScript arithmetic.
fn point(v: &Value) -> Option<(f64, f64)> {
    let Value::Array(c) = v else { return None };
    let n = |v: &Value| match v {
        Value::Null => Some(0.0),
        other => as_f64(other),
    };
    Some((n(c.first()?)?, n(c.get(1)?)?))
}

/// turf's `getCoord`: a Point feature, a Point, or `[x, y]`.
fn coord(v: &Value) -> Option<(f64, f64)> {
    match v.get("type").and_then(Value::as_str) {
        Some("Feature") => coord(v.get("geometry")?).filter(|_| {
            v.get("geometry")
                .and_then(|g| g.get("type"))
                .and_then(Value::as_str)
                == Some("Point")
        }),
        Some("Point") => point(v.get("coordinates")?),
        _ => point(v),
    }
}

/// Each geometry inside a GeoJSON value (features, collections).
fn geometries<'v>(v: &'v Value, out: &mut Vec<&'v Value>, depth: u32) {
    if depth > 64 {
        return;
    }
    match v.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => {
            if let Some(Value::Array(fs)) = v.get("features") {
                fs.iter().for_each(|f| geometries(f, out, depth + 1));
            }
        }
        Some("Feature") => {
            if let Some(g) = v.get("geometry") {
                geometries(g, out, depth + 1);
            }
        }
        Some("GeometryCollection") => {
            if let Some(Value::Array(gs)) = v.get("geometries") {
                gs.iter().for_each(|g| geometries(g, out, depth + 1));
            }
        }
        Some(_) => out.push(v),
        None => {}
    }
}

fn rings(v: Option<&Value>) -> Vec<Vec<(f64, f64)>> {
    let Some(Value::Array(rs)) = v else {
        return Vec::new();
    };
    rs.iter()
        .map(|r| match r {
            Value::Array(ps) => ps.iter().filter_map(point).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn ring_area(c: &[(f64, f64)]) -> f64 {
    let n = c.len();
    if n <= 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in 0..n {
        let (lo, mid, up) = if i == n - 2 {
            (n - 2, n - 1, 0)
        } else if i == n - 1 {
            (n - 1, 0, 1)
        } else {
            (i, i + 1, i + 2)
        };
        total += (area_rad(c[up].0) - area_rad(c[lo].0)) * libm::sin(area_rad(c[mid].1));
    }
    total * AREA_RADIUS * AREA_RADIUS / 2.0
}

fn polygon_area(rs: &[Vec<(f64, f64)>]) -> f64 {
    let Some((outer, holes)) = rs.split_first() else {
        return 0.0;
    };
    holes
        .iter()
        .fold(ring_area(outer).abs(), |t, h| t - ring_area(h).abs())
}

fn area(v: &Value) -> f64 {
    let mut gs = Vec::new();
    geometries(v, &mut gs, 0);
    gs.iter().fold(0.0, |total, g| {
        total
            + match g.get("type").and_then(Value::as_str) {
                Some("Polygon") => polygon_area(&rings(g.get("coordinates"))),
                Some("MultiPolygon") => match g.get("coordinates") {
                    Some(Value::Array(ps)) => ps
                        .iter()
                        .fold(0.0, |t, p| t + polygon_area(&rings(Some(p)))),
                    _ => 0.0,
                },
                _ => 0.0,
            }
    })
}

/// Units per radian (turf's `factors`).
fn factor(units: &str) -> Result<f64, SqlError> {
    Ok(match units {
        "centimeters" | "centimetres" => EARTH_RADIUS * 100.0,
        "degrees" => EARTH_RADIUS / 111_325.0,
        "feet" => EARTH_RADIUS * 3.28084,
        "inches" => EARTH_RADIUS * 39.37,
        "kilometers" | "kilometres" => EARTH_RADIUS / 1000.0,
        "meters" | "metres" => EARTH_RADIUS,
        "miles" => EARTH_RADIUS / 1609.344,
        "millimeters" | "millimetres" => EARTH_RADIUS * 1000.0,
        "nauticalmiles" => EARTH_RADIUS / 1852.0,
        "radians" => 1.0,
        "yards" => EARTH_RADIUS * 1.0936,
        other => return Err(SqlError::bad(format!("{other} units is invalid"))),
    })
}

fn haversine(a: (f64, f64), b: (f64, f64), factor: f64) -> f64 {
    let d_lat = rad(b.1 - a.1);
    let d_lon = rad(b.0 - a.0);
    // JavaScript's Math functions are fdlibm's in V8; `libm` is the same code, so the last digit
    // matches HarperDB's.
    let h = libm::pow(libm::sin(d_lat / 2.0), 2.0)
        + libm::pow(libm::sin(d_lon / 2.0), 2.0) * libm::cos(rad(a.1)) * libm::cos(rad(b.1));
    2.0 * libm::atan2(libm::sqrt(h), libm::sqrt(1.0 - h)) * factor
}

/// The length of every line and ring; `None` when a geometry has no coordinates (turf throws).
fn length(v: &Value, factor: f64) -> Option<f64> {
    let mut gs = Vec::new();
    geometries(v, &mut gs, 0);
    let mut lines: Vec<Vec<(f64, f64)>> = Vec::new();
    for g in gs {
        let c = g.get("coordinates");
        if !matches!(c, Some(Value::Array(_))) {
            return None;
        }
        match g.get("type").and_then(Value::as_str) {
            Some("LineString") => lines.extend(rings(Some(&Value::Array(vec![c
                .cloned()
                .unwrap_or(Value::Null)])))),
            Some("MultiLineString") | Some("Polygon") => lines.extend(rings(c)),
            Some("MultiPolygon") => {
                if let Some(Value::Array(ps)) = c {
                    ps.iter().for_each(|p| lines.extend(rings(Some(p))));
                }
            }
            _ => {}
        }
    }
    Some(lines.iter().fold(0.0, |total, l| {
        l.windows(2)
            .fold(total, |t, w| t + haversine(w[0], w[1], factor))
    }))
}

fn units(args: &[Value], i: usize) -> Result<f64, SqlError> {
    match args.get(i) {
        None | Some(Value::Null) => factor("kilometers"),
        Some(Value::String(u)) => factor(u),
        Some(other) => Err(SqlError::bad(format!("units must be text, not {other:?}"))),
    }
}

/// A measuring geo function by (upper-case) name; `None` for the others.
pub fn call(name: &str, args: &[Value]) -> Option<Result<Value, SqlError>> {
    let g = |i: usize| args.get(i).and_then(geojson);
    let distance = |f: f64| match (g(0).as_ref().and_then(coord), g(1).as_ref().and_then(coord)) {
        (Some(a), Some(b)) => Some(haversine(a, b, f)),
        _ => None,
    };
    Some(match name {
        "GEOAREA" => Ok(g(0).map_or(Value::Null, |v| num(area(&v)))),
        "GEOLENGTH" => {
            units(args, 1).map(|f| g(0).and_then(|v| length(&v, f)).map_or(Value::Null, num))
        }
        "GEODISTANCE" => units(args, 2).map(|f| distance(f).map_or(Value::Null, num)),
        "GEONEAR" => {
            let Some(limit) = args.get(2).and_then(as_f64) else {
                return Some(Err(SqlError::bad("geoNear: distance must be a number")));
            };
            units(args, 3).map(|f| Value::Bool(distance(f).is_some_and(|d| d <= limit)))
        }
        "GEOCONVERT" => convert(args),
        _ => return super::geo_relate::call(name, args, |i| units(args, i)),
    })
}

/// `geoConvert(coordinates, type, properties)`: a GeoJSON Feature of that geometry type (turf's
/// helpers), `properties` kept as given.
fn convert(args: &[Value]) -> Result<Value, SqlError> {
    let coords = match args.first().and_then(geojson) {
        Some(c @ Value::Array(_)) => c,
        _ => return Err(SqlError::bad("geoConvert: coordinates must be an array")),
    };
    let kind = match args.get(1).and_then(Value::as_str) {
        Some("point") => "Point",
        Some("lineString") => "LineString",
        Some("multiLineString") => "MultiLineString",
        Some("multiPoint") => "MultiPoint",
        Some("multiPolygon") => "MultiPolygon",
        Some("polygon") => "Polygon",
        _ => {
            return Err(SqlError::bad(
                "geoConvert: geo_type must be one of point, lineString, multiLineString, multiPoint, multiPolygon, polygon",
            ))
        }
    };
    if kind == "Point" && point(&coords).is_none() {
        return Err(SqlError::bad("geoConvert: a point needs two numbers"));
    }
    let mut geometry = crate::value::Object::new();
    geometry.insert("type", Value::String(kind.to_string()));
    geometry.insert("coordinates", coords);
    let mut feature = crate::value::Object::new();
    feature.insert("type", Value::String("Feature".into()));
    feature.insert(
        "properties",
        match args.get(2) {
            None | Some(Value::Null) => Value::Object(crate::value::Object::new()),
            Some(p) => p.clone(),
        },
    );
    feature.insert("geometry", Value::Object(geometry));
    Ok(Value::Object(feature))
}
